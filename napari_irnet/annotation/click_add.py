"""Click to add: the mask of a missed object from one click and the cached network outputs.

micro-sam turns one click into a mask with SAM's decoder; IRNet already has
what it needs for the same, cached per image (:class:`~napari_irnet.pipeline.inference.NetworkOutputs`):
the class activation maps say where a class is, the boundary map where one
object ends. :func:`instance_from_click` seeds the chosen class's CAM in a
small disk at the click, lets it compete with the CAMs of the instances
already there, and walks both (the same random walk as the instance walk,
:func:`~napari_irnet.pipeline.random_walk.random_walk`) on a window of the
stride-4 grid around the click only. The new instance is the part of the
window its walk wins and that reaches ``instance_bg_threshold`` of its own
maximum, cut to the connected region containing the click. So it works where
the pipeline found no centre (a weak CAM, a cluster merged with a
neighbour's): the boundary map bounds the region, not the seeds.

Only the window is walked (a few tens of grid cells beyond the typical
instance size), so a click takes a small fraction of a second on one core
whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label as connected_components

from ..params import Params
from ..pipeline.random_walk import random_walk
from .edits import EditError

__all__ = ["STRIDE", "instance_from_click", "typical_radius"]

#: stride of the network grid in image pixels
STRIDE = 4
#: instance radius (grid cells) assumed when the image has no instance yet
DEFAULT_RADIUS = 4.0
#: the window reaches this many typical radii from the click (plus the walk radius)
WINDOW_RADII = 3.0
#: the seed disk's radius in typical radii
SEED_RADII = 0.6
#: the new instance keeps the pixels whose class CAM reaches this fraction of the seed disk's strongest
CAM_FRACTION = 0.6
_MIN_HALF, _MAX_HALF = 8, 64


def typical_radius(labels: np.ndarray) -> float:
    """The median instance's equivalent-disk radius in grid cells (DEFAULT_RADIUS when there is none)."""
    counts = np.bincount(np.asarray(labels).ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return DEFAULT_RADIUS
    r = math.sqrt(float(np.median(counts)) / math.pi) / STRIDE
    return float(min(max(r, 1.5), 32.0))


def _window(centre: tuple[int, int], half: int, grid: tuple[int, int]) -> tuple[slice, slice]:
    return tuple(slice(max(c - half, 0), min(c + half + 1, n)) for c, n in zip(centre, grid))  # type: ignore[return-value]


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) grid maps to (C, H, W) pixels, bilinear as the pipeline does, cropped to ``size``."""
    up = F.interpolate(maps[None].float(), scale_factor=STRIDE, mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]].numpy()


def _component_at(mask: np.ndarray, click: tuple[int, int], disk: np.ndarray) -> np.ndarray:
    """The connected part of ``mask`` holding the click, else the one covering most of the seed disk."""
    parts = connected_components(mask, connectivity=1)
    part = int(parts[click])
    if part == 0:
        inside = parts[disk & (parts > 0)]
        if inside.size == 0:
            raise EditError("no object found at the click: paint it")
        part = int(np.bincount(inside).argmax())
    return parts == part


def instance_from_click(
    outputs,
    point: Sequence[float],
    labels: np.ndarray,
    class_id: int | None = None,
    params: Params | None = None,
    blocked: np.ndarray | None = None,
    radius: float | None = None,
) -> np.ndarray:
    """The mask of the object under a click, from the cached network outputs.

    Parameters
    ----------
    outputs : NetworkOutputs
        The image's cached CAMs and boundary map.
    point : (y, x)
        The click in image pixels; it must lie on background.
    labels : (H, W) int
        The instances already there: the new mask never takes their pixels.
    class_id : int, optional
        0-based model class of the new instance. Its CAM seeds the walk and
        trims the mask (pixels where it is under :data:`CAM_FRACTION` of its
        strongest value near the click are left out); a class without a CAM
        for this image, or None, seeds a plain disk.
    params : Params
        ``beta``, ``walk_steps``, ``radius`` and ``instance_bg_threshold``
        (the walked seed must reach that fraction of its maximum).
    blocked : (H, W) bool, optional
        Pixels the mask must leave alone besides the instances (e.g. the
        annotator's background).
    radius : float, optional
        Typical instance radius in grid cells (default: :func:`typical_radius` of ``labels``).

    Returns
    -------
    (H, W) bool
        The new instance: connected, containing the click (or most of the seed disk).

    Raises
    ------
    EditError
        The click is outside the image or on an instance, or no object is found there.
    """
    p = params or Params()
    labels = np.asarray(labels)
    H, W = labels.shape
    y, x = (int(round(float(v))) for v in point[-2:])
    if not (0 <= y < H and 0 <= x < W):
        raise EditError("the click lies outside the image")
    if labels[y, x] != 0:
        raise EditError(f"instance {int(labels[y, x])} is here already: pick it to split or delete it")
    r = typical_radius(labels) if radius is None else float(radius)
    seed_radius = max(1.5, SEED_RADII * r)
    half = int(min(max(math.ceil(WINDOW_RADII * r) + p.radius + 2, _MIN_HALF), _MAX_HALF))
    boundary = outputs.irn.boundary
    grid = tuple(boundary.shape[-2:])
    gy, gx = min(y // STRIDE, grid[0] - 1), min(x // STRIDE, grid[1] - 1)
    win = _window((gy, gx), half, grid)
    py = slice(win[0].start * STRIDE, min(win[0].stop * STRIDE, H))
    px = slice(win[1].start * STRIDE, min(win[1].stop * STRIDE, W))
    size = (py.stop - py.start, px.stop - px.start)
    sub = labels[py, px]
    # the seed: the class's CAM in a disk at the click, on cells no instance holds
    cells = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), bool)
    centre = sub[STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE] > 0
    cells[: centre.shape[0], : centre.shape[1]] = centre
    disk = torch.from_numpy(_disk(cells.shape, (gy - win[0].start, gx - win[1].start), seed_radius) & ~cells).float()
    ids = [int(c) for c in np.asarray(outputs.cam.class_ids).tolist()]
    plane = ids.index(class_id) if class_id in ids else None
    seed = disk
    if plane is not None and float((outputs.cam.strided[plane, win[0], win[1]] * disk).max()) > 1e-3:
        seed = outputs.cam.strided[plane, win[0], win[1]].float() * disk
    walked = random_walk(seed[None], boundary[win[0], win[1]].float(), beta=p.beta, steps=p.walk_steps, radius=p.radius)
    new = _upsample(walked, size)[0]
    top = float(new.max())
    if top <= 0:
        raise EditError("no object found at the click: paint it")
    mask = (new >= p.instance_bg_threshold * top) & (sub == 0)
    click = (y - py.start, x - px.start)
    near = _disk(size, click, seed_radius * STRIDE)
    if plane is not None:
        cam = outputs.cam.high_res[plane, py, px].numpy()
        mask &= cam >= CAM_FRACTION * float(cam[near].max())
    if blocked is not None:
        mask &= ~np.asarray(blocked, bool)[py, px]
    out = np.zeros((H, W), bool)
    out[py, px] = _component_at(mask, click, near)
    return out
