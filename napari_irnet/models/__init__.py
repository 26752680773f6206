"""The networks and their files: backbones, the CAM network and IRNet, checkpoints.

Importing this package never imports napari or Qt.
"""
