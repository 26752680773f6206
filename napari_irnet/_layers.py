"""Stage results as napari layer-data tuples (presentation only, no algorithm).

Every layer carries ``metadata["napari_irnet"] = {"stage": ..., "image": ...}``
so the plugin recognises its own layers whatever their current name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .core.edits import InstanceInfo, features_table, table_from_records

STAGES = ("CAM", "seeds", "boundary", "displacement", "centroids", "instances", "semantic")
#: stages shown when first added (the others start hidden)
VISIBLE_STAGES = ("centroids", "instances")
META_KEY = "napari_irnet"
_CAM_COLORMAPS = ("magenta", "cyan", "yellow", "green", "red", "blue", "orange", "bop purple")
#: at most this many displacement arrows along the longer image side
_ARROWS_PER_SIDE = 24


def _meta(stage: str, image_name: str, **extra) -> dict:
    return {META_KEY: {"stage": stage, "image": image_name, **extra}}


layer_meta = _meta


def stage_of(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The plugin's marker in a layer's metadata (``stage``, ``image``, ...), or None."""
    if not metadata:
        return None
    info = metadata.get(META_KEY)
    return info if isinstance(info, dict) and "stage" in info else None


def image_to_rgb8(data: np.ndarray, rgb: bool) -> np.ndarray:
    """An image layer's pixels as (H, W, 3) uint8, as the networks expect them.

    RGB(A) keeps its first three channels; a 2D gray image is repeated into
    three channels. Non-8-bit values are scaled from their 1st to 99.8th
    percentile (floats: minimum to maximum).
    """
    a = np.asarray(data)
    if rgb:
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) colour image, got shape {a.shape}")
        a = a[..., :3]
    else:
        if a.ndim != 2:
            raise ValueError(f"expected a 2D image (one plane), got shape {a.shape}; napari-irnet works on 2D images")
        a = np.repeat(a[..., None], 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float32)
    if not np.all(np.isfinite(f)):
        raise ValueError("the image has NaN or infinite pixels")
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = np.percentile(f, (1.0, 99.8))
    else:
        lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.ascontiguousarray(np.clip((f - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8))


def displacement_every(grid_shape: Sequence[int], per_side: int = _ARROWS_PER_SIDE) -> int:
    """Grid step that keeps about ``per_side`` arrows along the longer side."""
    return max(1, math.ceil(max(int(s) for s in grid_shape[-2:]) / per_side))


def displacement_vectors(displacement: np.ndarray, every: int = 2, stride: int = 4) -> np.ndarray:
    """(2, h, w) grid displacement -> napari Vectors data (N, 2, 2) in image pixels.

    Keeps every ``every``-th grid cell along each axis so arrows stay readable.
    """
    d = np.asarray(displacement)
    ys, xs = np.mgrid[0 : d.shape[1] : every, 0 : d.shape[2] : every]
    start = np.stack([ys.ravel(), xs.ravel()], axis=1) * stride + stride / 2
    vec = np.stack([d[0][ys, xs].ravel(), d[1][ys, xs].ravel()], axis=1) * stride
    return np.stack([start, vec], axis=1).astype(np.float32)


# --------------------------------------------------------------------------
# one function per stage: (data, kwargs, layer type)


def cam_layers(image_id: str, outputs, classes: Sequence[str]) -> list[tuple]:
    cams = outputs.cam.high_res.numpy()
    out = []
    for i, cid in enumerate(outputs.cam.class_ids):
        name = classes[int(cid)]
        kwargs = {
            "name": f"CAM {name}",
            "colormap": _CAM_COLORMAPS[i % len(_CAM_COLORMAPS)],
            "blending": "additive",
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.6,
            "visible": False,
            "metadata": _meta("CAM", image_id, class_name=name),
        }
        out.append((cams[i], kwargs, "image"))
    return out


def seeds_layer(image_id: str, seeds: np.ndarray) -> tuple:
    kwargs = {"name": "seeds", "opacity": 0.5, "visible": False, "metadata": _meta("seeds", image_id)}
    return (np.asarray(seeds).astype(np.int32), kwargs, "labels")


def boundary_layer(image_id: str, outputs, stride: int = 4) -> tuple:
    kwargs = {
        "name": "boundary",
        "colormap": "gray_r",
        "contrast_limits": (0.0, 1.0),
        "scale": (stride, stride),
        "translate": (stride / 2 - 0.5, stride / 2 - 0.5),
        "opacity": 0.6,
        "visible": False,
        "metadata": _meta("boundary", image_id),
    }
    return (outputs.irn.boundary.numpy(), kwargs, "image")


def displacement_layer(image_id: str, outputs, stride: int = 4, every: int | None = None) -> tuple:
    disp = outputs.irn.displacement.numpy()
    every = displacement_every(disp.shape) if every is None else every
    kwargs = {
        "name": "displacement",
        "edge_width": 1.0,
        "edge_color": "orange",
        "length": 1.0,
        "vector_style": "arrow",
        "visible": False,
        "metadata": _meta("displacement", image_id, every=every),
    }
    return (displacement_vectors(disp, every, stride), kwargs, "vectors")


def centroid_features(points: np.ndarray, labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> dict[str, np.ndarray]:
    """Class and instance id under each centroid (0 and "" on background)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts):
        ys = np.clip(np.rint(pts[:, 0]).astype(int), 0, labels.shape[0] - 1)
        xs = np.clip(np.rint(pts[:, 1]).astype(int), 0, labels.shape[1] - 1)
        ids = labels[ys, xs].astype(np.int64)
    else:
        ids = np.zeros(0, np.int64)
    cls = [table[int(i)].class_name if int(i) in table else "" for i in ids]
    return {"instance": ids, "class": np.array(cls, dtype=object)}


def centroids_layer(image_id: str, points: np.ndarray, labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> tuple:
    kwargs = {
        "name": "centroids",
        "size": 7,
        "face_color": "yellow",
        "border_color": "black",
        "features": centroid_features(points, labels, table),
        "metadata": _meta("centroids", image_id),
    }
    return (np.asarray(points, dtype=np.float64).reshape(-1, 2), kwargs, "points")


def instances_layer(
    image_id: str, labels: np.ndarray, table: Mapping[int, InstanceInfo], classes: Sequence[str] = ()
) -> tuple:
    kwargs = {
        "name": "instances",
        "opacity": 0.6,
        "features": features_table(labels, table),
        "metadata": _meta("instances", image_id, classes=list(classes)),
    }
    return (labels, kwargs, "labels")


def semantic_layer(image_id: str, semantic: np.ndarray, classes: Sequence[str] = ()) -> tuple:
    kwargs = {"name": "semantic", "opacity": 0.5, "visible": False, "metadata": _meta("semantic", image_id, classes=list(classes))}
    return (semantic, kwargs, "labels")


def prediction_layers(
    image_name: str,
    outputs,
    prediction,
    classes: Sequence[str],
    stride: int = 4,
) -> list[tuple]:
    """LayerDataTuples for every stage of one image (see DESIGN.md, "Layers")."""
    labels = prediction.instances.labels
    table = table_from_records(prediction.instances.records, classes)
    return [
        *cam_layers(image_name, outputs, classes),
        seeds_layer(image_name, prediction.seeds),
        boundary_layer(image_name, outputs, stride),
        displacement_layer(image_name, outputs, stride),
        centroids_layer(image_name, prediction.centre_points, labels, table),
        instances_layer(image_name, labels, table, classes),
        semantic_layer(image_name, prediction.semantic, classes),
    ]
