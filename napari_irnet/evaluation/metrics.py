"""Evaluation metrics: instance mAP^r, box AP and semantic mIoU.

The instance metric follows the PASCAL VOC protocol as implemented by
chainercv's ``eval_instance_segmentation_voc`` (and, for boxes,
``eval_detection_voc``), which is how the IRNet paper (Ahn, Cho and Kwak,
CVPR 2019) reports mAP^r at IoU 0.25 / 0.5 / 0.7 / 0.75:

1. In every image and for every class, the predictions are taken in order of
   decreasing score. Each one looks at the ground-truth (GT) instance of its
   class with which it has the highest IoU (ties: the first GT). If that IoU
   is below the threshold it is a false positive (FP). If that GT is marked
   *difficult*, the prediction is ignored (neither TP nor FP). If the GT was
   already claimed by a higher-scored prediction, it is a FP (a duplicate);
   otherwise it is a true positive (TP) and claims the GT.
   ``matching="coco"`` instead mimics ``COCOeval.evaluateImg``: a prediction
   takes the best *still unclaimed* GT (difficult GT last, and they may be
   claimed repeatedly). The two rules only differ when the best GT is already
   claimed while another unclaimed GT still passes the threshold. That cannot
   happen when the GT masks are pairwise disjoint (label maps) and the
   threshold is above 0.5: a mask can then overlap more than half with at
   most one GT.
2. Per class, the results of all images are sorted by score (a stable sort:
   ties keep image order, then score order within the image, exactly like
   ``COCOeval.accumulate``; chainercv's unstable sort may order ties
   differently). Precision = TP / (TP + FP), recall = TP / number of
   non-difficult GT.
3. AP is the area under the precision envelope (precision made
   non-increasing in recall), the VOC2010+ rule (chainercv
   ``use_07_metric=False``), not the 11-point VOC2007 rule and not COCO's
   101-point sampling. A class without non-difficult GT has AP = NaN and is
   left out of mAP (a NaN-mean over classes); a class with GT and no correct
   prediction has AP = 0.

Ignore regions (VOC's 255 pixels: object borders, crowds, unlabelled
objects) are something chainercv does not know. Here, pixels in the ignore
region of an image are removed from *both* masks before the IoU is computed,
so a prediction is neither rewarded nor penalised for the pixels it puts
there. A consequence: a prediction lying entirely inside the ignore region has
IoU 0 with everything and counts as a false positive, just as it would under
chainercv. Pass no ignore mask to reproduce chainercv's numbers exactly.

Semantic segmentation is scored like the reference's ``eval_sem_seg``: a
confusion matrix over background + classes (GT pixels equal to the ignore
index are skipped, predicted ignore-index pixels count as background), IoU =
TP / (TP + FP + FN) per class, mIoU = NaN-mean over the classes that occur in
the GT or the prediction.

:func:`coco_mask_ap` runs the same data through pycocotools' ``COCOeval``
(segm) for cross-checking. Its AP samples the same precision envelope at 101
recall points (0, 0.01, ..., 1) and averages them, so it differs from the
area rule by the sampling alone: when every recall value of the curve is a
multiple of 0.01, COCO AP = (100 * area AP + envelope at recall 0) / 101.

Pure numpy; pycocotools is imported only inside :func:`coco_mask_ap`.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "APAccumulator",
    "InstanceSet",
    "average_precision",
    "box_average_precision",
    "box_iou",
    "boxes_from_label_map",
    "coco_mask_ap",
    "instance_average_precision",
    "instances_from_label_map",
    "label_map_iou",
    "mask_iou",
    "match_predictions",
    "semantic_confusion",
    "semantic_miou",
]

#: columns of the pixel matrix multiplied at once in :func:`mask_iou`
_CHUNK = 8192
#: above this many (prediction, GT, pixel) overlaps, mask_iou uses a matrix product
_MAX_TRIPLES = 20_000_000
_MATCHING = ("voc", "coco")


# --------------------------------------------------------------------------
# inputs


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


# --------------------------------------------------------------------------
# IoU


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


# --------------------------------------------------------------------------
# matching and AP


def _match(iou: np.ndarray, difficult: np.ndarray, threshold: float, matching: str) -> tuple[np.ndarray, np.ndarray]:
    """Match predictions (rows, already in score order) to GT (columns) of one class.

    Returns ``status`` (1 TP, 0 FP, -1 ignored) and the matched GT column
    (-1 for none), one per row.
    """
    n_pred, n_gt = iou.shape
    status = np.zeros(n_pred, np.int8)
    matched = np.full(n_pred, -1, np.int64)
    if n_gt == 0:
        return status, matched
    claimed = np.zeros(n_gt, bool)
    if matching == "voc":
        best = np.argmax(iou, axis=1)
        for i in range(n_pred):
            j = int(best[i])
            if iou[i, j] < threshold:
                continue
            if difficult[j]:
                status[i] = -1
            elif not claimed[j]:
                status[i] = 1
            matched[i] = j
            claimed[j] = True
        # a duplicate keeps status 0 (FP) but we still report which GT it hit
        return status, matched
    # COCO: non-difficult GT first (stable), best unclaimed IoU >= threshold,
    # later GT win ties, difficult GT can be claimed any number of times
    order = np.argsort(difficult, kind="stable")
    start = min(threshold, 1 - 1e-10)  # COCOeval's starting value
    for i in range(n_pred):
        best_iou, m = start, -1
        for j in order:
            if claimed[j] and not difficult[j]:
                continue
            if m > -1 and not difficult[m] and difficult[j]:
                break
            if iou[i, j] < best_iou:
                continue
            best_iou, m = iou[i, j], int(j)
        if m == -1:
            continue
        status[i] = -1 if difficult[m] else 1
        matched[i] = m
        claimed[m] = True
    return status, matched


def _check_matching(matching: str) -> str:
    if matching not in _MATCHING:
        raise ValueError(f"matching must be one of {_MATCHING}, got {matching!r}")
    return matching


def match_predictions(
    iou: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    gt_labels: np.ndarray,
    gt_difficult: np.ndarray | None = None,
    iou_threshold: float = 0.5,
    matching: str = "voc",
) -> tuple[np.ndarray, np.ndarray]:
    """Match the predictions of one image to its GT (see the module docstring).

    Parameters
    ----------
    iou : (P, G) float
        IoU of every prediction with every GT instance (any class; only
        pairs of the same class are used).
    pred_labels, pred_scores : (P,)
    gt_labels : (G,)
    gt_difficult : (G,) bool, optional
    iou_threshold : float
        A match needs IoU >= this.
    matching : "voc" or "coco"

    Returns
    -------
    status : (P,) int8
        1 true positive, 0 false positive, -1 ignored (matched a difficult
        GT), in the order of the inputs.
    gt_index : (P,) int64
        Column of the GT the prediction was matched to (for duplicates under
        ``"voc"``: the already claimed GT it hit), -1 for none.
    """
    _check_matching(matching)
    iou = np.asarray(iou, dtype=np.float64)
    pred_labels = np.asarray(pred_labels, np.int64).reshape(-1)
    pred_scores = np.asarray(pred_scores, np.float64).reshape(-1)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    n_pred, n_gt = pred_labels.size, gt_labels.size
    if iou.shape != (n_pred, n_gt):
        raise ValueError(f"match_predictions: iou has shape {iou.shape}, expected {(n_pred, n_gt)}")
    if pred_scores.size != n_pred:
        raise ValueError(f"match_predictions: {pred_scores.size} scores for {n_pred} predictions")
    difficult = np.zeros(n_gt, bool) if gt_difficult is None else np.asarray(gt_difficult, bool).reshape(-1)
    if difficult.size != n_gt:
        raise ValueError(f"match_predictions: {difficult.size} difficult flags for {n_gt} GT")
    status = np.zeros(n_pred, np.int8)
    gt_index = np.full(n_pred, -1, np.int64)
    order = np.argsort(-pred_scores, kind="stable")
    for c in np.unique(pred_labels):
        rows = order[pred_labels[order] == c]
        cols = np.flatnonzero(gt_labels == c)
        st, m = _match(iou[np.ix_(rows, cols)], difficult[cols], float(iou_threshold), matching)
        status[rows] = st
        gt_index[rows] = np.where(m >= 0, cols[np.maximum(m, 0)] if cols.size else -1, -1)
    return status, gt_index


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope (VOC2010+ AP).

    ``precision`` and ``recall`` are the curve over the ranked predictions
    (recall non-decreasing). The curve is closed with precision 0 at recall 0
    and 1, the precision is replaced by its running maximum from the right
    (the envelope), and the area is summed over the steps where recall
    changes. NaN precision (0 / 0) counts as 0. An empty curve gives 0.
    """
    precision = np.nan_to_num(np.asarray(precision, dtype=np.float64).reshape(-1))
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    if precision.shape != recall.shape:
        raise ValueError("average_precision: precision and recall differ in length")
    p = np.concatenate([[0.0], precision, [0.0]])
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class APAccumulator:
    """Collects matches image by image; :meth:`result` gives AP per threshold.

    Use it to evaluate many images without keeping their masks in memory;
    :func:`instance_average_precision` and :func:`box_average_precision` are
    thin wrappers around it.

    Parameters
    ----------
    iou_thresholds : sequence of float
    num_classes : int, optional
        Number of classes; default: one more than the largest label seen.
    matching : "voc" (chainercv, default) or "coco" (COCOeval's rule)
    """

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.25, 0.5, 0.7, 0.75),
        num_classes: int | None = None,
        matching: str = "voc",
    ) -> None:
        self.iou_thresholds = tuple(float(t) for t in np.atleast_1d(iou_thresholds))
        if not self.iou_thresholds:
            raise ValueError("APAccumulator: give at least one IoU threshold")
        self.num_classes = num_classes
        self.matching = _check_matching(matching)
        self.images = 0
        self._n_pos: dict[int, int] = defaultdict(int)
        self._n_pred: dict[int, int] = defaultdict(int)
        self._scores: dict[int, list[np.ndarray]] = defaultdict(list)
        self._status: dict[float, dict[int, list[np.ndarray]]] = {
            t: defaultdict(list) for t in self.iou_thresholds
        }

    def add_iou(
        self,
        iou: np.ndarray,
        pred_labels: np.ndarray,
        pred_scores: np.ndarray,
        gt_labels: np.ndarray,
        gt_difficult: np.ndarray | None = None,
    ) -> None:
        """Add one image given its (P, G) IoU matrix and the labels."""
        pred_labels = np.asarray(pred_labels, np.int64).reshape(-1)
        pred_scores = np.asarray(pred_scores, np.float64).reshape(-1)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        difficult = (
            np.zeros(gt_labels.size, bool) if gt_difficult is None else np.asarray(gt_difficult, bool).reshape(-1)
        )
        iou = np.asarray(iou, np.float64).reshape(pred_labels.size, gt_labels.size)
        if pred_scores.size != pred_labels.size:
            raise ValueError(f"{pred_scores.size} scores for {pred_labels.size} predictions")
        if difficult.size != gt_labels.size:
            raise ValueError(f"{difficult.size} difficult flags for {gt_labels.size} GT instances")
        for labels in (pred_labels, gt_labels):
            if labels.size and labels.min() < 0:
                raise ValueError("class labels must be >= 0")
            if labels.size and self.num_classes is not None and labels.max() >= self.num_classes:
                raise ValueError(f"class label {labels.max()} >= num_classes {self.num_classes}")
        order = np.argsort(-pred_scores, kind="stable")
        for c in np.union1d(pred_labels, gt_labels).tolist():
            rows = order[pred_labels[order] == c]
            cols = np.flatnonzero(gt_labels == c)
            self._n_pos[c] += int(np.count_nonzero(~difficult[cols]))
            self._n_pred[c] += int(rows.size)
            self._scores[c].append(pred_scores[rows])
            sub = iou[np.ix_(rows, cols)]
            for t in self.iou_thresholds:
                status, _ = _match(sub, difficult[cols], t, self.matching)
                self._status[t][c].append(status)
        self.images += 1

    def add_masks(self, pred: InstanceSet, gt: InstanceSet) -> None:
        """Add one image given as two :class:`InstanceSet` (masks)."""
        if pred.scores is None:
            raise ValueError("predictions need scores (InstanceSet.scores is None)")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction is {pred.shape}, ground truth {gt.shape}")
        ignore = _union(pred.ignore, gt.ignore)
        iou = mask_iou(pred.masks, gt.masks, ignore)
        self.add_iou(iou, pred.labels, pred.scores, gt.labels, gt.difficult)

    def add_boxes(
        self,
        pred_boxes: np.ndarray,
        pred_labels: np.ndarray,
        pred_scores: np.ndarray,
        gt_boxes: np.ndarray,
        gt_labels: np.ndarray,
        gt_difficult: np.ndarray | None = None,
    ) -> None:
        """Add one image of boxes (``[x0, y0, x1, y1]``, see :func:`box_iou`)."""
        self.add_iou(box_iou(pred_boxes, gt_boxes), pred_labels, pred_scores, gt_labels, gt_difficult)

    def result(self) -> dict[float, dict[str, Any]]:
        """AP per IoU threshold.

        Returns
        -------
        dict
            ``{threshold: {"mAP": float, "AP": (K,) array (NaN: no GT),
            "precision": list of K arrays or None, "recall": list of K
            arrays or None, "n_pos": (K,) int, "n_pred": (K,) int}}``; the
            curves run over the ranked TP/FP predictions of the class
            (ignored ones left out), None for classes without GT.
        """
        seen = set(self._n_pos) | set(self._n_pred)
        k = self.num_classes if self.num_classes is not None else (max(seen) + 1 if seen else 0)
        n_pos = np.array([self._n_pos.get(c, 0) for c in range(k)], np.int64)
        n_pred = np.array([self._n_pred.get(c, 0) for c in range(k)], np.int64)
        out: dict[float, dict[str, Any]] = {}
        for t in self.iou_thresholds:
            ap = np.full(k, np.nan)
            precisions: list[np.ndarray | None] = [None] * k
            recalls: list[np.ndarray | None] = [None] * k
            for c in range(k):
                if n_pos[c] == 0:
                    continue
                if self._scores.get(c):
                    scores = np.concatenate(self._scores[c])
                    status = np.concatenate(self._status[t][c])
                    status = status[np.argsort(-scores, kind="stable")]
                    status = status[status >= 0]
                else:
                    status = np.zeros(0, np.int8)
                tp = np.cumsum(status == 1)
                fp = np.cumsum(status == 0)
                precision = tp / np.maximum(tp + fp, 1)
                recall = tp / n_pos[c]
                precisions[c], recalls[c] = precision, recall
                ap[c] = average_precision(precision, recall)
            out[t] = {
                "mAP": _nanmean(ap),
                "AP": ap,
                "precision": precisions,
                "recall": recalls,
                "n_pos": n_pos.copy(),
                "n_pred": n_pred.copy(),
            }
        return out


def _union(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return np.logical_or(a, b)


def instance_average_precision(
    predictions: Sequence[InstanceSet],
    ground_truths: Sequence[InstanceSet],
    iou_thresholds: Sequence[float] = (0.25, 0.5, 0.7, 0.75),
    num_classes: int | None = None,
    matching: str = "voc",
) -> dict[float, dict[str, Any]]:
    """Instance segmentation AP (mAP^r) over a set of images, VOC protocol.

    Parameters
    ----------
    predictions, ground_truths : sequences of :class:`InstanceSet`
        One of each per image, in the same order; predictions need scores.
    iou_thresholds : sequence of float
    num_classes : int, optional
        Default: one more than the largest label seen.
    matching : "voc" (default, chainercv) or "coco"

    Returns
    -------
    dict
        See :meth:`APAccumulator.result`.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} prediction sets for {len(ground_truths)} ground-truth sets"
        )
    acc = APAccumulator(iou_thresholds, num_classes, matching)
    for pred, gt in zip(predictions, ground_truths):
        acc.add_masks(pred, gt)
    return acc.result()


def box_average_precision(
    pred_boxes: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray | None] | None = None,
    iou_thresholds: Sequence[float] = (0.5,),
    num_classes: int | None = None,
    matching: str = "voc",
) -> dict[float, dict[str, Any]]:
    """Box AP over a set of images, the VOC protocol of chainercv's ``eval_detection_voc``.

    Every argument is a sequence with one entry per image: ``(N, 4)`` boxes
    ``[x0, y0, x1, y1]`` (exclusive ``x1``/``y1``, see :func:`box_iou`),
    ``(N,)`` labels, scores and difficult flags. Same matching and AP as
    :func:`instance_average_precision`; for data annotated with boxes only
    (BCCD), with predicted boxes from :func:`boxes_from_label_map`.
    """
    n = len(pred_boxes)
    lengths = [len(pred_labels), len(pred_scores), len(gt_boxes), len(gt_labels)]
    if gt_difficult is not None:
        lengths.append(len(gt_difficult))
    if any(m != n for m in lengths):
        raise ValueError(f"box_average_precision: per-image sequences differ in length: {[n, *lengths]}")
    acc = APAccumulator(iou_thresholds, num_classes, matching)
    for i in range(n):
        acc.add_boxes(
            pred_boxes[i],
            pred_labels[i],
            pred_scores[i],
            gt_boxes[i],
            gt_labels[i],
            None if gt_difficult is None else gt_difficult[i],
        )
    return acc.result()


# --------------------------------------------------------------------------
# semantic segmentation


def semantic_confusion(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """Confusion matrix of a class map against the GT (add them up over images).

    Parameters
    ----------
    pred, gt : (H, W) int
        Class values 0..num_classes-1 (0 = background in our maps).
    num_classes : int
        K, the number of values including background.
    ignore_index : int or None
        GT pixels with this value are skipped; predicted pixels with it count
        as 0 (the reference maps its uncertain 255 pixels to background).

    Returns
    -------
    (K, K) int64
        ``[gt value, predicted value]`` pixel counts.

    Raises
    ------
    ValueError
        Different shapes, or values outside 0..K-1 (other than the ignore
        index).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"semantic_confusion: prediction {pred.shape} and GT {gt.shape} differ")
    k = int(num_classes)
    pred = pred.reshape(-1).astype(np.int64)
    gt = gt.reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = gt != ignore_index
        pred, gt = pred[keep], gt[keep]
        pred = np.where(pred == ignore_index, 0, pred)
    for name, values in (("GT", gt), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= k):
            bad = values[(values < 0) | (values >= k)][0]
            raise ValueError(f"semantic_confusion: {name} value {bad} outside 0..{k - 1}")
    return np.bincount(gt * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def semantic_miou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU from a confusion matrix.

    IoU of class c = TP / (TP + FP + FN) = ``C[c,c] / (row c + column c -
    C[c,c])``; NaN for a class in neither GT nor prediction, which the mean
    leaves out.

    Returns
    -------
    miou : float
    iou : (K,) float64
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    denom = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    iou = np.divide(tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)
    return _nanmean(iou), iou


# --------------------------------------------------------------------------
# COCO cross-check


def coco_mask_ap(
    predictions: Sequence[InstanceSet],
    ground_truths: Sequence[InstanceSet],
    iou_threshold: float = 0.5,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The same data scored by pycocotools' ``COCOeval`` (segm), for cross-checks.

    Masks become RLE with ``pycocotools.mask.encode``; image ids are
    1..n (input order), category ids class + 1, GT and prediction ids 1..
    in input order (image by image). Difficult GT are passed as
    ``iscrowd=1``, COCO's only per-GT "ignore" (note that COCO measures a
    crowd overlap as intersection / prediction area). Area range "all" and
    maxDets = the largest number of predictions in one image, so no
    prediction is dropped.

    Returns
    -------
    dict
        ``"mAP"`` (mean over classes with GT), ``"AP"`` ((K,) per class,
        NaN without GT), ``"cocoeval"`` (the evaluated ``COCOeval``, with
        ``evalImgs`` and ``eval``), ``"pred_index"`` / ``"gt_index"``
        (``(image, instance)`` of each prediction / GT id, index = id - 1).

    Raises
    ------
    ValueError
        An image carries an ignore region (COCO has no such concept).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} ground-truth sets")
    labels = [s.labels for s in (*predictions, *ground_truths) if len(s)]
    k = num_classes if num_classes is not None else (int(max(lab.max() for lab in labels)) + 1 if labels else 0)
    images, gt_anns, dt_anns = [], [], []
    gt_index, pred_index = [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths), start=1):
        if pred.ignore is not None or gt.ignore is not None:
            raise ValueError("coco_mask_ap: COCO has no ignore regions; pass ignore=None")
        if pred.scores is None:
            raise ValueError("coco_mask_ap: predictions need scores")
        h, w = gt.shape
        images.append({"id": i, "height": h, "width": w, "file_name": f"{i}.png"})
        difficult = gt.difficult if gt.difficult is not None else np.zeros(len(gt), bool)
        for j in range(len(gt)):
            rle = mask_utils.encode(np.asfortranarray(gt.masks[j].astype(np.uint8)))
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": i,
                    "category_id": int(gt.labels[j]) + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": int(difficult[j]),
                }
            )
            gt_index.append((i - 1, j))
        for j in range(len(pred)):
            rle = mask_utils.encode(np.asfortranarray(pred.masks[j].astype(np.uint8)))
            dt_anns.append(
                {
                    "image_id": i,
                    "category_id": int(pred.labels[j]) + 1,
                    "segmentation": rle,
                    "score": float(pred.scores[j]),
                }
            )
            pred_index.append((i - 1, j))
    ap = np.full(k, np.nan)
    result: dict[str, Any] = {"AP": ap, "cocoeval": None, "pred_index": pred_index, "gt_index": gt_index}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(k)],
        }
        coco_gt.createIndex()
        has_gt = np.zeros(k, bool)
        for ann in gt_anns:
            if not ann["iscrowd"]:
                has_gt[ann["category_id"] - 1] = True
        if not dt_anns:  # loadRes cannot take an empty list; nothing found: AP 0
            ap[has_gt] = 0.0
            result["mAP"] = _nanmean(ap)
            return result
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        params = evaluator.params
        params.imgIds = [img["id"] for img in images]
        params.catIds = list(range(1, k + 1))
        params.iouThrs = np.array([float(iou_threshold)])
        params.areaRng = [[0.0, 1e10]]
        params.areaRngLbl = ["all"]
        per_image = np.bincount([p[0] for p in pred_index], minlength=len(images))
        params.maxDets = [max(1, int(per_image.max()))]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # (recall points, classes)
    for c in range(k):
        if np.all(precision[:, c] > -1):
            ap[c] = float(precision[:, c].mean())
    result["mAP"] = _nanmean(ap)
    result["cocoeval"] = evaluator
    return result
