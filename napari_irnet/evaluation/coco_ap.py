"""The cross-check with pycocotools: the same instances scored by ``COCOeval``.

:func:`coco_mask_ap` runs the data of :mod:`~napari_irnet.evaluation.metrics` through pycocotools' ``COCOeval``
(segm) for cross-checking. Its AP samples the same precision envelope at 101
recall points (0, 0.01, ..., 1) and averages them, so it differs from the
area rule by the sampling alone: when every recall value of the curve is a
multiple of 0.01, COCO AP = (100 * area AP + envelope at recall 0) / 101.

pycocotools is imported only inside :func:`coco_mask_ap`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import nan_mean
from .overlap import InstanceSet

__all__ = [
    "coco_mask_ap",
]


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
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} ground-truth sets")
    labels = [s.labels for s in (*predictions, *ground_truths) if len(s)]
    k = num_classes if num_classes is not None else (int(max(lab.max() for lab in labels)) + 1 if labels else 0)
    images, gt_anns, dt_anns, gt_index, pred_index = _coco_annotations(predictions, ground_truths)
    ap = np.full(k, np.nan)
    result: dict[str, Any] = {"AP": ap, "cocoeval": None, "pred_index": pred_index, "gt_index": gt_index}
    if not dt_anns:  # loadRes cannot take an empty list; nothing found: AP 0
        for ann in gt_anns:
            if not ann["iscrowd"]:
                ap[ann["category_id"] - 1] = 0.0
        result["mAP"] = nan_mean(ap)
        return result
    evaluator = _coco_evaluate(images, gt_anns, dt_anns, pred_index, k, iou_threshold)
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # (recall points, classes)
    for c in range(k):
        if np.all(precision[:, c] > -1):
            ap[c] = float(precision[:, c].mean())
    result["mAP"] = nan_mean(ap)
    result["cocoeval"] = evaluator
    return result


def _coco_annotations(predictions: Sequence[InstanceSet], ground_truths: Sequence[InstanceSet]):
    """COCO images, GT annotations, detections (RLE masks), and the (image, instance) of each GT and prediction id."""
    from pycocotools import mask as mask_utils

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
            dt_anns.append({"image_id": i, "category_id": int(pred.labels[j]) + 1, "segmentation": rle, "score": float(pred.scores[j])})
            pred_index.append((i - 1, j))
    return images, gt_anns, dt_anns, gt_index, pred_index


def _coco_evaluate(images, gt_anns, dt_anns, pred_index, k: int, iou_threshold: float):
    """``COCOeval`` (segm) evaluated and accumulated at one IoU, area range "all", every prediction kept."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(k)]}
        coco_gt.createIndex()
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
    return evaluator
