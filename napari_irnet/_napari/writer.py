"""Writer contributions: an ``instances`` Labels layer as a label TIFF or COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo
from ..io.coco import coco_from_instances
from ..io.files import atomic_write
from ..io.results import write_instance_tiff
from .layers import stage_of


def _labels_2d(data: Any) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: the full resolution
        data = data[0]
    a = np.asarray(data)
    if a.ndim != 2:
        raise ValueError(f"napari-irnet writes 2D label layers; this one has shape {a.shape}")
    return a


def _table(meta: dict) -> dict[int, InstanceInfo]:
    """Instance table from a layer's features (columns index, class, score, state)."""
    feats = meta.get("features")
    if feats is None or len(feats) == 0 or "index" not in feats:
        return {}
    cols = {c: list(feats[c]) for c in feats.columns}
    table = {}
    for k, idx in enumerate(cols["index"]):
        if int(idx) == 0:
            continue
        cls = cols.get("class", [""] * len(cols["index"]))[k]
        score = cols.get("score", [1.0] * len(cols["index"]))[k]
        state = cols.get("state", ["proposed"] * len(cols["index"]))[k]
        if state not in ("proposed", "edited", "accepted"):
            state = "proposed"
        table[int(idx)] = InstanceInfo(str(cls) if cls is not None else "", float(score), state)
    return table


def write_instances_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Save a Labels layer as a zlib-compressed uint16/uint32 TIFF."""
    write_instance_tiff(path, _labels_2d(data))
    return [path]


def write_instances_coco(path: str, data: Any, meta: dict) -> list[str]:
    """Save a Labels layer as COCO instance JSON (RLE masks, classes from its features)."""
    labels = _labels_2d(data)
    info = stage_of(meta.get("metadata")) or {}
    classes = info.get("classes") or []
    name = info.get("image_name") or meta.get("name") or Path(path).stem
    doc = coco_from_instances(labels, _table(meta), classes, file_name=str(name))
    text = json.dumps(doc) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return [path]
