"""Where an image's masks live: the project store, the per-image folder, batch prediction, export.

Importing this package never imports napari or Qt.
"""
