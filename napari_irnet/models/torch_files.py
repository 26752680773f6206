"""Torch files read and written safely: plain data only, never code; written atomically.

A checkpoint, a fine-tuning resume file and a weights file are all torch
files. :func:`safe_torch_load` reads them with ``weights_only=True``, so a
file holding Python objects is refused, never unpickled;
:func:`write_torch_file` writes through a temporary file;
:func:`plain_data` makes a value storable in such a file.
"""

from __future__ import annotations

import numbers
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_write

__all__ = ["CheckpointError", "plain_data", "safe_torch_load", "write_torch_file"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


#: history stages that train the CAM network, and those that train IRNet's heads


def write_torch_file(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`~napari_irnet.io.files.atomic_path`).

    A temporary file in the same folder, flushed to disk, then renamed: the
    old file stays intact on any failure, which raises
    :class:`~napari_irnet.io.files.OutputError` naming ``path``. The file gets
    the permissions of the user's umask.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: a full disk raises OSError, not torch's RuntimeError
            torch.save(obj, f)

    return atomic_write(path, write)


def safe_torch_load(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers, text, lists and dicts, never code.

    Raises
    ------
    CheckpointError
        For a file that holds other Python objects (a pickle that could run
        code when read: refused, never unpickled), and for unreadable files.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" not in text and "GLOBAL" not in text:  # garbage, not a pickled object
            raise CheckpointError(f"{path}: not a readable {what} (not a PyTorch file, or a damaged one)") from exc
        found = re.search(r"GLOBAL ([\w.]+)", text)
        culprit = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(
            f"{path}: refused: the {what} holds Python objects{culprit}, not only tensors, numbers and text; "
            "reading them could run code, so napari-irnet does not (its own files never hold any)"
        ) from None
    except Exception as exc:  # torch raises many kinds for corrupt files
        raise CheckpointError(f"{path}: not a readable {what} ({exc.__class__.__name__}: {exc})") from exc


def plain_data(value: Any, where: str = "value") -> Any:
    """``value`` as data :func:`safe_torch_load` reads: numbers, text, None, lists and str/int-keyed dicts.

    NumPy scalars and arrays, tensors, tuples and paths are converted;
    anything else raises ``TypeError`` (so nothing unreadable is written).
    """
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [plain_data(v, where) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): plain_data(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored (only numbers, text, lists and dicts)")
