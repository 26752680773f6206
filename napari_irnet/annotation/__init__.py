"""Correcting one image without Qt: the instance table, label edits, undo, click to add, the annotation session.

Importing this package never imports napari or Qt.
"""
