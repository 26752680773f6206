"""Reader contribution: a label TIFF/PNG (instance or class map) as a Labels layer.

The manifest offers it for label-like file names (``*instances.tif``,
``*_labels.png``, ``*_semantic.png``, ``*_mask.tif``, ...), so ordinary
images keep opening with napari's own reader. A file that is not a label
image (colour pixels, fractional values) is declined.
"""

from __future__ import annotations

from pathlib import Path

from ..io.files import InputError
from ..io.images import read_label_image

_SUFFIXES = (".tif", ".tiff", ".png")


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() not in _SUFFIXES or not p.is_file():
        return None
    try:
        labels = read_label_image(p)
    except InputError:
        return None

    def reader(_path):
        name = p.stem
        stage = "semantic" if "semantic" in name.lower() else "labels"
        meta = {"napari_irnet": {"role": "opened", "kind": stage, "path": str(p)}}
        return [(labels, {"name": name, "metadata": meta}, "labels")]

    return reader
