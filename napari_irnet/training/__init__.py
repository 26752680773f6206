"""Training the two networks: data sets, losses, targets, the CAM and IRNet loops, fine-tuning, distributed runs.

Importing this package never imports napari or Qt.
"""
