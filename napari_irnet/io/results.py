"""The files a prediction or an export writes, and reads back.

Instance maps as TIFF (:func:`write_instance_tiff`), class maps as PNG with the VOC palette
(:func:`write_semantic_png`), per-instance records as JSON (:func:`write_instances_json`:
id, class, score, bbox, area) and the class legend beside them (:func:`write_class_legend`);
:func:`output_stems` names the files of a folder of images apart. Every write is atomic
(:func:`~napari_irnet.io.files.atomic_write`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from .files import InputError, atomic_write, existing_file, read_json, write_json
from .labels import check_class_list

__all__ = [
    "CLASS_LEGEND",
    "output_stems",
    "read_class_legend",
    "read_instances_json",
    "voc_palette",
    "write_class_legend",
    "write_instance_tiff",
    "write_instances_json",
    "write_semantic_png",
]


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map.

    Label ``i`` gets its colour by dealing out its bits: bit 0 of ``i`` to red,
    bit 1 to green, bit 2 to blue, then the next three bits one place lower in
    each channel, and so on, starting from each channel's highest bit. So 0 is
    black, 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), 255 is
    (224, 224, 192).

    Parameters
    ----------
    n
        Number of colours, 1..256.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` ``uint8``, row ``i`` the RGB colour of label ``i``.
    """
    if not 1 <= n <= 256:
        raise ValueError(f"voc_palette: n must be between 1 and 256, got {n}")
    index = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):  # three bits of the index per level
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            colours[:, channel] |= bit << (7 - level)
    return colours.astype(np.uint8)


def _as_label_array(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {array.shape}")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} has negative values (minimum {array.min()})")
    return array


def write_instance_tiff(path: str | os.PathLike[str], instances: np.ndarray) -> Path:
    """Write an instance label map as a zlib-compressed TIFF, atomically.

    Parameters
    ----------
    path
        The ``.tif`` file to write.
    instances
        ``(H, W)`` non-negative integers, 0 = background, k = instance k.
        Stored as ``uint16`` when the maximum is below 65536, else ``uint32``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Not 2D, not integer, negative, or an id of 2**32 or more.
    OutputError
        The file could not be written.
    """
    array = _as_label_array(instances, "instances")
    top = int(array.max()) if array.size else 0
    if top >= 2**32:
        raise ValueError(f"instances: id {top} does not fit in uint32")
    out = array.astype(np.uint16 if top < 65536 else np.uint32)
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(tmp, out, compression="zlib", photometric="minisblack"),
    )


def write_semantic_png(
    path: str | os.PathLike[str], semantic: np.ndarray, palette: bool = True
) -> Path:
    """Write a class map as an 8-bit PNG, atomically.

    Parameters
    ----------
    path
        The ``.png`` file to write.
    semantic
        ``(H, W)`` integers in 0..255 (``uint8`` or any integer type), the
        class index of each pixel (VOC: 0 background, 255 ignore).
    palette
        ``True``: a palette PNG (mode ``P``) with :func:`voc_palette`; the
        stored values are the class indices, which viewers show in colour.
        ``False``: a plain gray PNG (mode ``L``) with the same values.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Not 2D, not integer, or values outside 0..255.
    OutputError
        The file could not be written.
    """
    array = _as_label_array(semantic, "semantic")
    if array.size and int(array.max()) > 255:
        raise ValueError(f"semantic: values must be 0..255, got maximum {array.max()}")
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))  # mode L
    if palette:
        img.putpalette(voc_palette(256).tobytes())  # turns it into mode P, same values
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


_RECORD_KEYS = ("id", "class", "score", "bbox", "area")


def _plain_record(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of one instance record, checked."""
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"records[{index}] is missing {', '.join(missing)}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    bbox = out["bbox"]
    if isinstance(bbox, tuple):
        bbox = list(bbox)
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"records[{index}]['bbox'] must be [x0, y0, x1, y1], got {bbox!r}")
    out["bbox"] = [int(v) for v in np.asarray(bbox).tolist()]
    out["id"] = int(out["id"])
    out["area"] = int(out["area"])
    out["score"] = float(out["score"])
    out["class"] = str(out["class"])
    if not math.isfinite(out["score"]):
        raise ValueError(f"records[{index}]['score'] is not finite: {out['score']}")
    return out


def write_instances_json(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> Path:
    """Write per-instance records as a JSON list, atomically.

    Parameters
    ----------
    path
        The ``.json`` file to write.
    records
        One dict per instance with at least ``id`` (int, the value in the
        instance label map), ``class`` (str), ``score`` (float), ``bbox``
        (``[x0, y0, x1, y1]`` in pixels: x = column, y = row; ``x0, y0``
        inclusive, ``x1, y1`` exclusive, so width = ``x1 - x0``) and
        ``area`` (int, pixel count). Other keys are kept. numpy scalars and
        arrays are converted to plain numbers and lists.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        A record lacks a key, has a malformed bbox or a non-finite score.
    OutputError
        The file could not be written.
    """
    return write_json(path, [_plain_record(i, r) for i, r in enumerate(records)])


def read_instances_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read records written by :func:`write_instances_json`.

    Returns
    -------
    list of dict
        The records, with the keys described there.

    Raises
    ------
    InputError
        Missing file, malformed JSON, not a list of objects with the
        required keys.
    """
    p = existing_file(path, "instances file")
    data = read_json(p, "instances file")
    if not isinstance(data, list):
        raise InputError(f"{p}: expected a JSON list of instance records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"{p}: record {i} is not an object")
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise InputError(f"{p}: record {i} is missing {', '.join(missing)}")
    return data


#: the file beside predictions and label-image exports that names the class values
CLASS_LEGEND = "classes.json"


def write_class_legend(folder: str | os.PathLike[str], classes: Sequence[str]) -> Path:
    """Write ``<folder>/classes.json``: which class each value of the semantic maps stands for.

    ``{"background": 0, "classes": {"1": name, "2": name, ...}, ...}``, the
    values being class index + 1 in ``classes``' order. ``predict`` writes it
    beside its predictions (in the model's class order) and the label-image
    export beside its maps (in the project's), so that readers map the
    values to classes by name, never by position.
    """
    legend = {
        "background": 0,
        "classes": {str(i + 1): str(c) for i, c in enumerate(classes)},
        "semantic": "class index + 1, 0 = background",
        "instances": "instance id, 0 = background",
    }
    return write_json(Path(folder) / CLASS_LEGEND, legend)


def read_class_legend(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a ``classes.json`` (see :func:`write_class_legend`), in value order.

    Raises
    ------
    InputError
        Missing or malformed file, values that are not 1..N, a name twice.
    """
    p = existing_file(path, "class legend")
    data = read_json(p, "class legend")
    table = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InputError(f"{p}: expected {{\"classes\": {{\"1\": name, \"2\": name, ...}}}}")
    try:
        by_value = {int(k): v for k, v in table.items()}
    except ValueError:
        raise InputError(f"{p}: 'classes' keys must be the class values 1, 2, ...") from None
    if sorted(by_value) != list(range(1, len(by_value) + 1)):
        raise InputError(f"{p}: 'classes' must number the classes 1..N, got {sorted(by_value)}")
    return check_class_list(p, [by_value[v] for v in sorted(by_value)], "classes")


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """A distinct file stem for each image name, for the files written about it.

    The stem is the name without its suffix, sub-folders joined by ``__``
    (``sub/a.png`` -> ``sub__a``); names whose stems would clash (``a.png``
    and ``a.jpg``; also ``a.png`` and ``A.png``, which are one file on some
    file systems) keep their suffix (``a_png``, ``a_jpg``), and any clash
    left gets ``-2``, ``-3``, ...
    """

    def plain(name: str) -> str:
        return Path(name).with_suffix("").as_posix().replace("/", "__")

    def counts(stems) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in stems:
            out[s.casefold()] = out.get(s.casefold(), 0) + 1
        return out

    first = {n: plain(n) for n in names}
    seen = counts(first.values())
    stems = {n: (s if seen[s.casefold()] == 1 else n.replace("/", "__").replace(".", "_")) for n, s in first.items()}
    taken: set[str] = set()
    for n, s in stems.items():
        candidate, k = s, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{s}-{k}"
        taken.add(candidate.casefold())
        stems[n] = candidate
    return stems
