"""From an image to instances: the networks' inference, the stages after them, the random walks, the stage cache.

Importing this package never imports napari or Qt.
"""
