"""Stage results as napari layer-data tuples (presentation only, no algorithm).

Every layer carries ``metadata["napari_irnet"] = {"stage": ..., "image": ...}``
so the plugin recognises its own layers whatever their current name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STAGES = ("CAM", "seeds", "boundary", "displacement", "centroids", "instances", "semantic")
_CAM_COLORMAPS = ("magenta", "cyan", "yellow", "green", "red", "blue", "orange", "bop purple")


def _meta(stage: str, image_name: str, **extra) -> dict:
    return {"napari_irnet": {"stage": stage, "image": image_name, **extra}}


def displacement_vectors(displacement: np.ndarray, every: int = 2, stride: int = 4) -> np.ndarray:
    """(2, h, w) grid displacement -> napari Vectors data (N, 2, 2) in image pixels.

    Keeps every ``every``-th grid cell along each axis so arrows stay readable.
    """
    d = np.asarray(displacement)
    ys, xs = np.mgrid[0 : d.shape[1] : every, 0 : d.shape[2] : every]
    start = np.stack([ys.ravel(), xs.ravel()], axis=1) * stride + stride / 2
    vec = np.stack([d[0][ys, xs].ravel(), d[1][ys, xs].ravel()], axis=1) * stride
    return np.stack([start, vec], axis=1).astype(np.float32)


def prediction_layers(
    image_name: str,
    outputs,
    prediction,
    classes: Sequence[str],
    stride: int = 4,
) -> list[tuple]:
    """LayerDataTuples for every stage of one image (see DESIGN.md, "Layers")."""
    scale = (stride, stride)
    translate = (stride / 2 - 0.5, stride / 2 - 0.5)
    layers: list[tuple] = []
    cams = outputs.cam.high_res.numpy()
    for i, cid in enumerate(outputs.cam.class_ids):
        name = classes[int(cid)]
        layers.append(
            (
                cams[i],
                {
                    "name": f"CAM {name}",
                    "colormap": _CAM_COLORMAPS[i % len(_CAM_COLORMAPS)],
                    "blending": "additive",
                    "contrast_limits": (0.0, 1.0),
                    "opacity": 0.6,
                    "visible": False,
                    "metadata": _meta("CAM", image_name, class_name=name),
                },
                "image",
            )
        )
    layers.append((prediction.seeds.astype(np.int32), {"name": "seeds", "opacity": 0.5, "visible": False, "metadata": _meta("seeds", image_name)}, "labels"))
    layers.append(
        (
            outputs.irn.boundary.numpy(),
            {"name": "boundary", "colormap": "gray_r", "contrast_limits": (0.0, 1.0), "scale": scale, "translate": translate, "opacity": 0.6, "visible": False, "metadata": _meta("boundary", image_name)},
            "image",
        )
    )
    layers.append(
        (
            displacement_vectors(outputs.irn.displacement.numpy(), 2, stride),
            {"name": "displacement", "edge_width": 1.0, "edge_color": "orange", "length": 1.0, "visible": False, "metadata": _meta("displacement", image_name)},
            "vectors",
        )
    )
    pts = prediction.centre_points
    k = len(pts)
    layers.append(
        (
            pts,
            {"name": "centroids", "size": 6, "face_color": "yellow", "border_color": "black", "features": {"instance": np.arange(k)}, "metadata": _meta("centroids", image_name)},
            "points",
        )
    )
    records = prediction.instances.records
    features = {
        "index": np.array([0] + [r["id"] for r in records]),
        "class": np.array([""] + [classes[r["class_id"]] for r in records], dtype=object),
        "score": np.array([0.0] + [r["score"] for r in records]),
        "state": np.array(["background"] + ["proposed"] * len(records), dtype=object),
    }
    layers.append((prediction.instances.labels, {"name": "instances", "opacity": 0.6, "features": features, "metadata": _meta("instances", image_name)}, "labels"))
    layers.append((prediction.semantic, {"name": "semantic", "opacity": 0.5, "visible": False, "metadata": _meta("semantic", image_name)}, "labels"))
    return layers
