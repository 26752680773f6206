"""The engine of napari-irnet: torch, numpy and scikit-image only.

Importing this package (or any module in it) never imports napari or Qt.
"""

from .params import Params, TrainParams
from .synthetic import CLASS_NAMES, SyntheticSample, make_dataset, make_sample, write_dataset

__all__ = [
    "CLASS_NAMES",
    "Params",
    "SyntheticSample",
    "TrainParams",
    "make_dataset",
    "make_sample",
    "write_dataset",
]
