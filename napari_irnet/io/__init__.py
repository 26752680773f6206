"""Files: images, image-level labels, result files, atomic writes, COCO masks.

Importing this package never imports napari or Qt.
"""
