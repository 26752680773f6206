"""Exact training targets from an instance map (ground truth or a person's corrections).

The weak pipeline learns from CAM seeds, where "related" means "same class".
An instance map says more: pixels of one instance are related, pixels of
two instances are not, even when the instances touch and share a class.
These functions turn an instance map into

* relation labels for :func:`~napari_irnet.training.irn.train_irn` (pairs
  inside one instance positive, pairs across instances or instance and
  background negative), the targets of the fully supervised upper bound and
  of fine-tuning from corrections;
* a boundary target and a displacement target on the stride-4 grid, for
  inspection and for direct supervision (DESIGN.md, "Human-in-the-loop
  training");
* a class map for the CAM network (:func:`class_map_target`), which
  :func:`~napari_irnet.training.cam.train_cam_from_masks` and fine-tuning
  learn per pixel.

Shapes: full-resolution maps are (H, W); grid maps are (h, w) with
h = ceil(H / 4), w = ceil(W / 4), sampled at the grid cell's top-left pixel
(nearest-neighbour downsampling, as the relation labels are in training).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from skimage.segmentation import find_boundaries

from ..pipeline.stages import IGNORE

__all__ = ["boundary_target", "class_map_target", "displacement_target", "relation_labels", "to_grid"]


def _ignore_unreviewed(labels: np.ndarray, reviewed: np.ndarray | None, background: np.ndarray | None = None) -> np.ndarray:
    """``labels`` with IGNORE where ``reviewed`` (same shape, bool; None: all reviewed) is False.

    ``background`` (the annotator background: pixels a person cleared) is
    true background (0) whatever ``reviewed`` says.
    """
    if reviewed is not None:
        reviewed = np.asarray(reviewed, bool)
        if reviewed.shape != labels.shape:
            raise ValueError(f"reviewed {reviewed.shape} and instances {labels.shape} differ in shape")
        labels[~reviewed] = IGNORE
    if background is not None:
        background = np.asarray(background, bool)
        if background.shape != labels.shape:
            raise ValueError(f"background {background.shape} and instances {labels.shape} differ in shape")
        labels[background] = 0
    return labels


def relation_labels(instances: np.ndarray, reviewed: np.ndarray | None = None, background: np.ndarray | None = None) -> np.ndarray:
    """Instance map to relation labels: one positive region per instance.

    Parameters
    ----------
    instances : (H, W) int
        Instance ids, 0 = background.
    reviewed : (H, W) bool, optional
        Pixels a person has checked; the rest become ignore (255) so that
        they add no pairs. Default: all reviewed.
    background : (H, W) bool, optional
        The annotator background (deleted or erased pixels): background, even
        outside ``reviewed``.

    Returns
    -------
    (H, W) int32: 0 background, 255 ignore, and one distinct value per
    instance (1, 2, ..., skipping 255).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be a 2-D label map, got shape {instances.shape}")
    ids, inverse = np.unique(instances, return_inverse=True)
    inverse = inverse.reshape(instances.shape).astype(np.int32)
    if ids[0] != 0:  # no background pixel: every value is an instance
        inverse += 1
    inverse[inverse >= IGNORE] += 1  # keep 255 for "ignore"
    return _ignore_unreviewed(inverse, reviewed, background)


def class_map_target(
    instances: np.ndarray,
    instance_classes: Mapping[int, int],
    reviewed: np.ndarray | None = None,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Instance map and the class of each instance to a class map.

    Parameters
    ----------
    instances : (H, W) int
        Instance ids, 0 = background.
    instance_classes : {instance id: 0-based class index}
        Instances missing here (class unknown) become ignore.
    reviewed : (H, W) bool, optional
        Pixels a person has checked; the rest become ignore. Default: all.
    background : (H, W) bool, optional
        The annotator background: background (0) even outside ``reviewed``.

    Returns
    -------
    (H, W) int32: 0 background, class index + 1 inside instances, 255 ignore
    (the convention of the semantic maps the pipeline writes).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be a 2-D label map, got shape {instances.shape}")
    ids, inverse = np.unique(instances, return_inverse=True)
    lookup = np.full(ids.size, IGNORE, np.int32)
    for n, iid in enumerate(ids.tolist()):
        if iid == 0:
            lookup[n] = 0
        elif iid in instance_classes:
            c = int(instance_classes[iid])
            if not 0 <= c < IGNORE - 1:
                raise ValueError(f"instance {iid}: class index {c} out of range")
            lookup[n] = c + 1
    out = lookup[inverse.reshape(instances.shape)]
    return _ignore_unreviewed(out, reviewed, background)


def to_grid(labels: np.ndarray, stride: int = 4) -> np.ndarray:
    """Nearest-neighbour downsampling of a label map to the stride grid: (ceil(H/s), ceil(W/s))."""
    return np.asarray(labels)[::stride, ::stride]


def boundary_target(instances: np.ndarray, stride: int = 4) -> np.ndarray:
    """Grid cells on the edge of an instance (against another instance or background).

    Returns
    -------
    (h, w) bool: True on both sides of every edge between two labels
    (including background) of the downsampled instance map.
    """
    return find_boundaries(to_grid(instances, stride), connectivity=1, mode="thick")


def displacement_target(instances: np.ndarray, stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Vector from each grid cell to the centroid of its instance.

    Returns
    -------
    displacement : (2, h, w) float32
        (dy, dx) in grid cells; 0 on background.
    valid : (h, w) bool
        True inside instances (where the target is defined).
    """
    grid = to_grid(instances, stride)
    h, w = grid.shape
    ids, inverse = np.unique(grid, return_inverse=True)
    inverse = inverse.ravel()
    yy, xx = np.mgrid[0:h, 0:w]
    count = np.bincount(inverse, minlength=ids.size).astype(np.float64)
    cy = np.bincount(inverse, weights=yy.ravel(), minlength=ids.size) / count
    cx = np.bincount(inverse, weights=xx.ravel(), minlength=ids.size) / count
    valid = grid > 0
    disp = np.stack([cy[inverse].reshape(h, w) - yy, cx[inverse].reshape(h, w) - xx]).astype(np.float32)
    disp[:, ~valid] = 0.0
    return disp, valid
