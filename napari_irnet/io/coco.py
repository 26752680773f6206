"""One instance map as a COCO instance-segmentation JSON (the layer writer's format).

For whole projects see :mod:`napari_irnet.store.export`; this module turns a
single ``(H, W)`` instance map and its instance table into a COCO dataset
with one image, RLE masks (pycocotools) and one category per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo

#: category used for instances without a class
UNNAMED_CLASS = "object"


def encode_mask(mask: np.ndarray) -> tuple[dict[str, Any], int, list[float]]:
    """COCO RLE of one binary mask (pycocotools), JSON-ready, with its area and bbox.

    Parameters
    ----------
    mask : (H, W) bool or 0/1 array

    Returns
    -------
    rle : dict
        ``{"size": [H, W], "counts": str}``.
    area : int
        Pixel count.
    bbox : list of 4 float
        ``[x, y, width, height]`` in pixels.
    """
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, int(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def coco_from_instances(
    labels: np.ndarray,
    table: Mapping[int, InstanceInfo] | None = None,
    classes: Sequence[str] = (),
    file_name: str = "image.png",
) -> dict[str, Any]:
    """A COCO dict (``images``, ``annotations``, ``categories``) for one instance map.

    Parameters
    ----------
    labels : (H, W) int
        0 background, k > 0 instance k (annotation ids are the instance ids).
    table : id -> InstanceInfo, optional
        Class, score and state per instance; ids missing there get
        ``classes[0]`` when there is exactly one class, else ``"object"``.
    classes : sequence of str
        Category order (category id = index + 1). Classes found in the
        table but not listed are appended.
    file_name : str
        The image's file name in ``images``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a COCO export needs a 2D instance map, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance ids must be >= 0")
    table = dict(table or {})
    default = classes[0] if len(classes) == 1 else UNNAMED_CLASS
    cats = list(dict.fromkeys(str(c) for c in classes))
    ids = [int(i) for i in np.unique(labels) if i != 0]
    for i in ids:
        name = table[i].class_name if i in table and table[i].class_name else default
        if name not in cats:
            cats.append(name)
    H, W = labels.shape
    annotations = []
    for i in ids:
        rle, area, bbox = encode_mask(labels == i)
        info = table.get(i)
        name = info.class_name if info is not None and info.class_name else default
        ann = {
            "id": i,
            "image_id": 1,
            "category_id": cats.index(name) + 1,
            "segmentation": rle,
            "area": float(area),
            "bbox": bbox,
            "iscrowd": 0,
        }
        if info is not None:
            ann["score"] = float(info.score)
            ann["state"] = info.state
        annotations.append(ann)
    return {
        "images": [{"id": 1, "file_name": file_name, "height": int(H), "width": int(W)}],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(cats)],
    }
