"""napari-irnet: instance masks from image-level labels with IRNet, with a person in the loop.

The algorithm lives in :mod:`napari_irnet.core`, which imports neither napari
nor Qt; :mod:`napari_irnet.cli` is the command line; the napari plugin is
declared in ``napari.yaml``.
"""

__version__ = "0.1.0"
