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

Semantic segmentation is scored like the reference's ``eval_sem_seg``: a
confusion matrix over background + classes (GT pixels equal to the ignore
index are skipped, predicted ignore-index pixels count as background), IoU =
TP / (TP + FP + FN) per class, mIoU = NaN-mean over the classes that occur in
the GT or the prediction.

The instances and their overlaps (ignore regions included) are
:mod:`~napari_irnet.evaluation.overlap`; the cross-check with pycocotools is
:mod:`~napari_irnet.evaluation.coco_ap`. Pure numpy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .overlap import InstanceSet, box_iou, mask_iou

__all__ = [
    "APAccumulator",
    "average_precision",
    "box_average_precision",
    "instance_average_precision",
    "match_predictions",
    "nan_mean",
    "semantic_confusion",
    "semantic_miou",
]


_MATCHING = ("voc", "coco")


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


def nan_mean(values: np.ndarray) -> float:
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
                "mAP": nan_mean(ap),
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
    return nan_mean(iou), iou
