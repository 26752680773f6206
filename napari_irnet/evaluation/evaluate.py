"""Score a folder of predictions against ground truth: instance mAP^r and semantic mIoU.

:func:`evaluate_folder` reads the predictions as ``predict`` writes them
(:mod:`~napari_irnet.evaluation.predictions`) and the ground truth in one of
three layouts (:mod:`~napari_irnet.evaluation.ground_truth`: a VOC folder, a
label folder, a COCO file); :func:`format_table` prints the result.
Instances are scored with :mod:`napari_irnet.evaluation.metrics`
(chainercv's VOC protocol, ignore pixels left out of every IoU), the
semantic maps with the confusion-matrix mIoU over background + classes.

A ground-truth image without a prediction counts as an empty prediction
(every object missed), with a warning, unless ``only_predicted``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.files import InputError, name_list
from .ground_truth import IGNORE, GtImage, open_ground_truth
from .metrics import APAccumulator, semantic_confusion, semantic_miou
from .overlap import dense_ids, label_map_iou, mask_iou
from .predictions import PredictedImage, find_predictions, prediction_classes, read_prediction

__all__ = [
    "evaluate_folder",
    "format_table",
]


def _score_image(acc: APAccumulator, truth: GtImage, pred: PredictedImage | None, where: Path | None, k: int) -> np.ndarray:
    """Add one image's instances to ``acc``; return its semantic confusion. ``pred`` None: an empty prediction."""
    shape = truth.semantic.shape
    if pred is None:  # nothing predicted: every object missed, every pixel background
        acc.add_iou(np.zeros((0, truth.labels.size)), [], [], truth.labels)
        return semantic_confusion(np.zeros(shape, np.int64), truth.semantic, k + 1, IGNORE)
    if pred.instances.shape != shape:
        raise InputError(f"{where}: size {pred.instances.shape} differs from the ground truth {truth.source} {shape}")
    if truth.instances is not None:
        iou, pred_ids, _ = label_map_iou(pred.instances, truth.instances, truth.ignore)
    else:
        pred_ids, index = dense_ids(pred.instances)
        index = index.reshape(pred.instances.shape)
        masks = index[None] == np.arange(1, pred_ids.size + 1)[:, None, None]
        iou = mask_iou(masks, truth.masks, truth.ignore)
    acc.add_iou(
        iou,
        [pred.classes[int(i)] for i in pred_ids],
        [pred.scores[int(i)] for i in pred_ids],
        truth.labels,
    )
    return semantic_confusion(pred.semantic, truth.semantic, k + 1, IGNORE)


def evaluate_folder(
    pred_dir: Path,
    gt_path: Path,
    classes: list[str] | None = None,
    gt_format: str = "auto",
    iou_thresholds: Sequence[float] = (0.25, 0.5, 0.7, 0.75),
    only_predicted: bool = False,
) -> dict:
    """Score every prediction in ``pred_dir`` against the ground truth.

    Parameters
    ----------
    pred_dir
        Folder written by ``predict`` (see the module docstring).
    gt_path
        VOC folder, label-image folder or COCO JSON file.
    classes
        The ground truth's class names in index order (the order of the
        values 1, 2, ... in its class maps). Default: taken from the ground
        truth (see the module docstring). The predictions' own class order
        comes from their ``classes.json``; classes are matched by name.
    gt_format
        ``"auto"``, ``"voc"``, ``"labels"`` or ``"coco"``.
    iou_thresholds
        IoU thresholds of the instance AP.
    only_predicted
        Score only the images that have predictions. By default a
        ground-truth image without a prediction counts as an empty
        prediction (all its objects missed), with a warning.

    Returns
    -------
    dict
        ``classes``, ``prediction_classes`` (the predictions' class order),
        ``gt_format``, ``images`` (number scored), ``images_without_prediction``
        (ground-truth images without a prediction: scored as empty, or left
        out with ``only_predicted``), ``only_predicted``, ``warnings``,
        ``iou_thresholds``, ``instance`` ``{threshold: {"mAP": float, "AP":
        [per class]}}`` (NaN for a class without GT), ``n_gt`` / ``n_pred``
        (instances per class), ``semantic`` ``{"mIoU": float, "IoU":
        [background, classes...], "confusion": [[...]]}`` (rows GT, columns
        prediction).

    Raises
    ------
    InputError
        A missing or unreadable file, a prediction without ground truth,
        sizes that differ, unknown class names; the message names the file.
    """
    pred_dir, gt_path = Path(pred_dir), Path(gt_path)
    if classes is not None:
        repeated = sorted({c for c in classes if list(classes).count(c) > 1})
        if repeated or not classes:
            raise InputError(f"{gt_path}: the classes given for it {'list ' + repr(repeated[0]) + ' twice' if repeated else 'are empty'}")
    predictions = find_predictions(pred_dir)
    gt = open_ground_truth(gt_path, gt_format, list(classes) if classes is not None else None)
    names = gt.classes
    orphans = [stem for stem in predictions if stem not in gt.stems]
    if orphans:
        first = predictions[orphans[0]]
        raise InputError(
            f"{first}: no ground truth for image {orphans[0]!r} in {gt_path}"
            + (f" ({len(orphans)} predictions lack ground truth: {name_list(orphans)})" if len(orphans) > 1 else "")
        )
    warnings: list[str] = []
    pred_classes, lut = prediction_classes(pred_dir, names, warnings)
    unpredicted = sorted(gt.stems - set(predictions))
    if unpredicted:
        how = "left out (only_predicted)" if only_predicted else "scored as empty predictions (every object missed)"
        warnings.append(f"{pred_dir}: {len(unpredicted)} ground-truth image(s) have no prediction, {how}: {name_list(unpredicted)}")
    k = len(names)
    acc = APAccumulator(iou_thresholds, num_classes=k)
    confusion = np.zeros((k + 1, k + 1), np.int64)
    for stem, tif in predictions.items():
        confusion += _score_image(acc, gt.load(stem), read_prediction(stem, tif, names, pred_classes, lut), tif, k)
    for stem in [] if only_predicted else unpredicted:
        confusion += _score_image(acc, gt.load(stem), None, None, k)
    ap = acc.result()
    miou, iou_per_class = semantic_miou(confusion)
    first = ap[acc.iou_thresholds[0]]
    return {
        "classes": list(names),
        "prediction_classes": list(pred_classes),
        "gt_format": gt.format,
        "images": len(predictions) + (0 if only_predicted else len(unpredicted)),
        "images_without_prediction": len(unpredicted),
        "only_predicted": bool(only_predicted),
        "warnings": warnings,
        "iou_thresholds": list(acc.iou_thresholds),
        "instance": {t: {"mAP": r["mAP"], "AP": [float(v) for v in r["AP"]]} for t, r in ap.items()},
        "n_gt": [int(v) for v in first["n_pos"]],
        "n_pred": [int(v) for v in first["n_pred"]],
        "semantic": {
            "mIoU": miou,
            "IoU": [float(v) for v in iou_per_class],
            "confusion": confusion.tolist(),
        },
    }


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(results: dict) -> str:
    """A markdown table of :func:`evaluate_folder`'s results.

    One row per class (AP at each threshold, semantic IoU, GT and predicted
    instance counts), a background row (IoU only) and a mean row (mAP^r and
    mIoU). ``n/a``: a class without ground-truth instances (AP) or absent
    from both maps (IoU); such classes are left out of the means.
    """
    thresholds = results["iou_thresholds"]
    classes = results["classes"]
    inst = results["instance"]
    sem_iou = results["semantic"]["IoU"]
    head = ["class", *[f"AP@{t:g}" for t in thresholds], "IoU", "GT", "pred"]
    missing = results.get("images_without_prediction", 0)
    counted = f" ({missing} without a prediction, {'left out' if results.get('only_predicted') else 'scored as empty'})" if missing else ""
    lines = [
        f"{results['images']} images{counted}, ground truth: {results['gt_format']}; "
        "instance AP: VOC area under the PR curve (chainercv protocol); IoU: semantic",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":--"] + ["--:"] * (len(head) - 1)) + "|",
        "| background | " + " | ".join([""] * len(thresholds)) + f" | {_fmt(sem_iou[0])} |  |  |",
    ]
    for c, name in enumerate(classes):
        cells = [_fmt(inst[t]["AP"][c]) for t in thresholds]
        cells += [_fmt(sem_iou[c + 1]), str(results["n_gt"][c]), str(results["n_pred"][c])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [_fmt(inst[t]["mAP"]) for t in thresholds] + [_fmt(results["semantic"]["mIoU"])]
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{m}**" for m in means)
        + f" | {sum(results['n_gt'])} | {sum(results['n_pred'])} |"
    )
    return "\n".join(lines) + "\n"
