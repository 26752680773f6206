"""Scoring predictions against ground truth: instance AP, semantic IoU, the evaluate command's reader.

Importing this package never imports napari or Qt.
"""
