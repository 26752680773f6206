"""The instances to score and how much they overlap: masks, label maps, boxes.

:class:`InstanceSet` holds one image's instances (masks, classes, scores,
difficult flags, an ignore region); :func:`mask_iou`, :func:`label_map_iou`
and :func:`box_iou` measure every pair.

Ignore regions (VOC's 255 pixels: object borders, crowds, unlabelled
objects) are something chainercv does not know. Here, pixels in the ignore
region of an image are removed from *both* masks before the IoU is computed,
so a prediction is neither rewarded nor penalised for the pixels it puts
there. A consequence: a prediction lying entirely inside the ignore region has
IoU 0 with everything and counts as a false positive, just as it would under
chainercv. Pass no ignore mask to reproduce chainercv's numbers exactly.

Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "box_iou",
    "boxes_from_label_map",
    "dense_ids",
    "instances_from_label_map",
    "InstanceSet",
    "label_map_iou",
    "mask_iou",
]


#: columns of the pixel matrix multiplied at once in :func:`mask_iou`
_CHUNK = 8192


#: above this many (prediction, GT, pixel) overlaps, mask_iou uses a matrix product
_MAX_TRIPLES = 20_000_000


@dataclass
class InstanceSet:
    """The instances of one image: predictions or ground truth.

    Attributes
    ----------
    masks : (N, H, W) bool
        One mask per instance; masks may overlap.
    labels : (N,) int
        0-based class index of each instance.
    scores : (N,) float or None
        Confidence of each prediction (required for predictions, unused for
        ground truth).
    difficult : (N,) bool or None
        Ground truth only: instances that neither count as positives nor
        make a prediction matched to them a false positive. None = none.
    ignore : (H, W) bool or None
        Pixels left out of every IoU (e.g. VOC's 255 pixels). When both the
        prediction and the GT of an image carry one, their union is used.
    ids : (N,) int or None
        Optional identifiers of the instances (e.g. the ids in a label map);
        carried along, not used by the metrics.
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    difficult: np.ndarray | None = None
    ignore: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks)
        if masks.ndim != 3:
            raise ValueError(f"InstanceSet: masks must be (N, H, W), got shape {masks.shape}")
        self.masks = masks.astype(bool, copy=False)
        n = masks.shape[0]
        self.labels = _vector(self.labels, n, "labels", np.int64)
        if self.labels.size and self.labels.min() < 0:
            raise ValueError("InstanceSet: labels must be class indices >= 0")
        if self.scores is not None:
            self.scores = _vector(self.scores, n, "scores", np.float64)
            if not np.all(np.isfinite(self.scores)):
                raise ValueError("InstanceSet: scores must be finite")
        if self.difficult is not None:
            self.difficult = _vector(self.difficult, n, "difficult", bool)
        if self.ids is not None:
            self.ids = _vector(self.ids, n, "ids", np.int64)
        if self.ignore is not None:
            ignore = np.asarray(self.ignore, dtype=bool)
            if ignore.shape != masks.shape[1:]:
                raise ValueError(
                    f"InstanceSet: ignore has shape {ignore.shape}, masks are {masks.shape[1:]}"
                )
            self.ignore = ignore

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Image size ``(H, W)``."""
        return tuple(self.masks.shape[1:])  # type: ignore[return-value]


def _vector(values: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    array = np.asarray(values, dtype=dtype).reshape(-1) if np.size(values) else np.zeros(0, dtype)
    if array.shape != (n,):
        raise ValueError(f"InstanceSet: {name} has {array.size} entries for {n} instances")
    return array


def _lookup(table: Mapping[int, Any] | Sequence[Any] | np.ndarray, ids: np.ndarray, name: str) -> list:
    """``table[id]`` for every id: a dict by id or an array indexed by id."""
    out = []
    for i in ids.tolist():
        try:
            out.append(table[i])
        except (KeyError, IndexError):
            raise ValueError(f"instances_from_label_map: no {name} for instance id {i}") from None
    return out


def instances_from_label_map(
    label_map: np.ndarray,
    classes: Mapping[int, int] | Sequence[int] | np.ndarray,
    scores: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
    difficult: Mapping[int, bool] | Sequence[bool] | np.ndarray | None = None,
    ignore: np.ndarray | None = None,
) -> InstanceSet:
    """Build an :class:`InstanceSet` from an instance id map.

    Parameters
    ----------
    label_map : (H, W) int
        0 = background, k > 0 = instance k.
    classes
        0-based class index of every instance id present: a dict
        ``{id: class}`` or an array indexed by id (entry 0 unused).
    scores, difficult
        Optional, looked up the same way.
    ignore : (H, W) bool, optional
        Pixels to leave out of the IoU.

    Returns
    -------
    InstanceSet
        Instances in increasing id order, ``ids`` filled in.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"instances_from_label_map: label_map must be 2D, got {label_map.shape}")
    ids, index = dense_ids(label_map)
    masks = np.zeros((ids.size, *label_map.shape), bool)
    rows, cols = np.nonzero(label_map)
    masks[index.reshape(label_map.shape)[rows, cols] - 1, rows, cols] = True
    return InstanceSet(
        masks=masks,
        labels=np.asarray(_lookup(classes, ids, "class"), dtype=np.int64),
        scores=None if scores is None else np.asarray(_lookup(scores, ids, "score"), float),
        difficult=None if difficult is None else np.asarray(_lookup(difficult, ids, "difficult"), bool),
        ignore=ignore,
        ids=ids,
    )


def mask_iou(
    pred_masks: np.ndarray, gt_masks: np.ndarray, ignore: np.ndarray | None = None
) -> np.ndarray:
    """IoU of every prediction mask with every GT mask.

    Parameters
    ----------
    pred_masks : (P, H, W) bool
    gt_masks : (G, H, W) bool
    ignore : (H, W) bool, optional
        Pixels removed from all masks before counting.

    Returns
    -------
    (P, G) float64
        ``|p & g| / |p | g|``; 0 where both masks are empty.

    Notes
    -----
    The masks are turned into lists of (instance, pixel) entries. The
    intersections are then counted by joining the two lists on the pixel:
    the work is the sum of all intersections, so many small masks (cells,
    instances from label maps) cost little more than one pass over the
    masks. When the masks overlap so much that this sum would be huge, a
    chunked float32 matrix product over the pixels covered by both sides is
    used instead (exact: each chunk adds at most 8192 ones).
    """
    pred_masks = np.asarray(pred_masks, dtype=bool)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if pred_masks.ndim != 3 or gt_masks.ndim != 3:
        raise ValueError(
            f"mask_iou: masks must be (N, H, W), got {pred_masks.shape} and {gt_masks.shape}"
        )
    if pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"mask_iou: image sizes differ: {pred_masks.shape[1:]} and {gt_masks.shape[1:]}"
        )
    n_pred, n_gt = pred_masks.shape[0], gt_masks.shape[0]
    if n_pred == 0 or n_gt == 0:
        return np.zeros((n_pred, n_gt))
    pred = pred_masks.reshape(n_pred, -1)
    gt = gt_masks.reshape(n_gt, -1)
    n_pix = pred.shape[1]
    p_row, p_pix = _entries(pred)
    g_row, g_pix = _entries(gt)
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != pred_masks.shape[1:]:
            raise ValueError(f"mask_iou: ignore has shape {ignore.shape}, masks {pred_masks.shape[1:]}")
        keep = ~ignore.reshape(-1)
        p_keep, g_keep = keep[p_pix], keep[g_pix]
        p_row, p_pix, g_row, g_pix = p_row[p_keep], p_pix[p_keep], g_row[g_keep], g_pix[g_keep]
    pred_area = np.bincount(p_row, minlength=n_pred).astype(np.float64)
    gt_area = np.bincount(g_row, minlength=n_gt).astype(np.float64)
    g_cover = np.bincount(g_pix, minlength=n_pix)
    per_entry = g_cover[p_pix]  # GT masks on the pixel of each prediction entry
    total = int(per_entry.sum())
    if total <= _MAX_TRIPLES:
        inter = _join_counts(p_row, p_pix, per_entry, g_row, g_pix, g_cover, n_pred, n_gt)
    else:
        p_cover = np.bincount(p_pix, minlength=n_pix)
        shared = np.flatnonzero((p_cover > 0) & (g_cover > 0))
        if ignore is not None:
            shared = shared[keep[shared]]
        inter = np.zeros((n_pred, n_gt))
        for start in range(0, shared.size, _CHUNK):
            cols = shared[start : start + _CHUNK]
            inter += pred[:, cols].astype(np.float32) @ gt[:, cols].T.astype(np.float32)
    union = pred_area[:, None] + gt_area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _entries(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a (N, M) bool array, faster when it is mostly False.

    Whole 8-byte words of zeros are skipped first, then only the bytes of
    the remaining words are looked at.
    """
    n, m = masks.shape
    flat = np.ascontiguousarray(masks).reshape(-1)
    if flat.size % 8:
        return np.nonzero(masks)
    words = np.flatnonzero(flat.view(np.uint64))
    sub_word, byte = np.nonzero(flat.view(np.uint8).reshape(-1, 8)[words])
    index = words[sub_word] * 8 + byte
    return index // m, index % m


def _join_counts(p_row, p_pix, per_entry, g_row, g_pix, g_cover, n_pred, n_gt) -> np.ndarray:
    """(P, G) intersection counts by pairing every prediction entry with the GT entries of its pixel."""
    if per_entry.sum() == 0:
        return np.zeros((n_pred, n_gt))
    by_pixel = g_row[np.argsort(g_pix, kind="stable")]  # GT rows grouped by pixel
    group_start = np.cumsum(g_cover) - g_cover
    hit = per_entry > 0
    rows, pix, reps = p_row[hit], p_pix[hit], per_entry[hit]
    pred_of_pair = np.repeat(rows, reps)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    gt_of_pair = by_pixel[np.repeat(group_start[pix], reps) + within]
    counts = np.bincount(pred_of_pair * n_gt + gt_of_pair, minlength=n_pred * n_gt)
    return counts.reshape(n_pred, n_gt).astype(np.float64)


def label_map_iou(
    pred_map: np.ndarray, gt_map: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every instance of one label map with every instance of another.

    Linear in the number of pixels (one joint histogram of id pairs), so it
    suits large images with many instances, where (N, H, W) masks would not
    fit in memory.

    Parameters
    ----------
    pred_map, gt_map : (H, W) int
        Instance ids, 0 = background.
    ignore : (H, W) bool, optional
        Pixels left out of the counts.

    Returns
    -------
    iou : (P, G) float64
    pred_ids : (P,) int64
        Ids present in ``pred_map`` (increasing), the rows of ``iou``.
    gt_ids : (G,) int64
        Ids present in ``gt_map``, the columns.
    """
    pred_map = np.asarray(pred_map)
    gt_map = np.asarray(gt_map)
    if pred_map.shape != gt_map.shape or pred_map.ndim != 2:
        raise ValueError(f"label_map_iou: need two equal 2D shapes, got {pred_map.shape}, {gt_map.shape}")
    pred_ids, pred_inv = dense_ids(pred_map)
    gt_ids, gt_inv = dense_ids(gt_map)
    n_p, n_g = pred_ids.size + 1, gt_ids.size + 1
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool).reshape(-1)
        if keep.size != pred_map.size:
            raise ValueError(f"label_map_iou: ignore has shape {np.shape(ignore)}, maps {pred_map.shape}")
        pred_inv, gt_inv = pred_inv[keep], gt_inv[keep]
    joint = np.bincount(pred_inv * n_g + gt_inv, minlength=n_p * n_g).reshape(n_p, n_g)
    joint = joint.astype(np.float64)
    inter = joint[1:, 1:]
    pred_area = joint[1:, :].sum(axis=1)
    gt_area = joint[:, 1:].sum(axis=0)
    union = pred_area[:, None] + gt_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, pred_ids, gt_ids


def dense_ids(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present (increasing, 0 left out) and each pixel's index: 0 background, 1.. ids."""
    flat = np.asarray(label_map).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("label maps must not hold negative ids")
    top = int(flat.max())
    if top <= max(1 << 20, 4 * flat.size):  # a lookup table is cheaper than sorting
        ids = np.flatnonzero(np.bincount(flat, minlength=top + 1))
        ids = ids[ids != 0]
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), lut[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1) + (0 if ids[0] == 0 else 1)
    return ids[ids != 0].astype(np.int64), inverse


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` with every box in ``boxes_b``.

    Boxes are ``[x0, y0, x1, y1]`` with ``x1``, ``y1`` exclusive (the
    convention of our instance records), so a box's area is
    ``(x1 - x0) * (y1 - y0)``. Boxes from PASCAL VOC XML files give the last
    pixel inclusively: add 1 to their ``xmax`` and ``ymax`` first (chainercv's
    ``eval_detection_voc`` does the same internally).

    Returns
    -------
    (N, M) float64
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def boxes_from_label_map(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes of the instances of a label map.

    Returns
    -------
    ids : (N,) int64
        Instance ids present (increasing), 0 excluded.
    boxes : (N, 4) float64
        ``[x0, y0, x1, y1]``, x = column, y = row, ``x1``/``y1`` exclusive
        (the same as the ``bbox`` of our instance records).
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"boxes_from_label_map: label_map must be 2D, got {label_map.shape}")
    rows, cols = np.nonzero(label_map)
    values = label_map[rows, cols].astype(np.int64)
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4))
    order = np.argsort(values, kind="stable")
    values, rows, cols = values[order], rows[order], cols[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    boxes = np.stack(
        [
            np.minimum.reduceat(cols, starts),
            np.minimum.reduceat(rows, starts),
            np.maximum.reduceat(cols, starts) + 1,
            np.maximum.reduceat(rows, starts) + 1,
        ],
        axis=1,
    ).astype(np.float64)
    return values[starts], boxes
