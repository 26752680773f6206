"""Score a folder of predictions against ground truth.

Predictions are read as the ``predict`` command writes them, per image
``<stem>``:

- ``<stem>_instances.tif``: instance ids (0 = background);
- ``<stem>_instances.json``: one record per id with ``id``, ``class`` (class
  name), ``score``, ``bbox``, ``area``;
- ``<stem>_semantic.png``: class index + 1 per pixel (0 = background).

Ground truth may come in three layouts (``gt_format="auto"`` picks by what
``gt_path`` is):

``"voc"``
    A folder with ``SegmentationObject/<stem>.png`` (instance ids) and
    ``SegmentationClass/<stem>.png`` (class index + 1), VOC palette PNGs, 255
    = ignore. An object's class is the most frequent class value inside it
    (ties: the smaller value; 0 and 255 do not vote). Default classes: the
    20 VOC classes.
``"labels"``
    A folder with ``inst/<stem>.png|.tif`` (instance ids), optionally
    ``sem/<stem>.png|.tif`` (class index + 1, 255 = ignore) and
    ``instances.json`` ``{stem: {id: class}}`` where a class is a name or
    an integer (class index + 1, as in ``sem``; e.g. CoNSeP). An object
    missing from ``instances.json`` gets its majority ``sem`` value. This is
    the layout of :func:`napari_irnet.synthetic.write_dataset`. Default
    classes: ``labels.json``'s ``"classes"``, else ``META.json``'s
    ``"classes"`` (a list, or ``{"1": name, ...}``).
``"coco"``
    A COCO instances JSON file; images are matched by the stem of their
    ``file_name``, categories by name to the classes (default: all
    categories in id order). Crowd annotations and annotations of other
    categories become ignore regions (where no evaluated object lies), the
    way the VOC conversion marks them 255.

An object whose class cannot be found (no vote) is treated as an ignore
region. Instances are scored with :mod:`napari_irnet.evaluation.metrics`
(chainercv's VOC protocol, ignore pixels left out of every IoU), the
semantic maps with the confusion-matrix mIoU over background + classes.

Classes are matched by name: the records name their class, and
``classes.json`` beside the predictions (written by ``predict``) says which
class each value of the semantic maps is, in the model's order, which need
not be the ground truth's. A ground-truth image without a prediction counts
as an empty prediction (every object missed), with a warning, unless
``only_predicted``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import InputError, name_list, read_json
from ..io.images import read_label_image
from ..io.results import CLASS_LEGEND, read_class_legend, read_instances_json
from .metrics import APAccumulator, dense_ids, label_map_iou, mask_iou, semantic_confusion, semantic_miou

__all__ = ["GT_FORMATS", "evaluate_folder", "format_table"]

#: accepted values of ``gt_format``
GT_FORMATS = ("auto", "voc", "labels", "coco")
_LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_IGNORE = 255
# --------------------------------------------------------------------------
# predictions


def _find_predictions(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.exists():
        raise InputError(f"{pred_dir}: prediction folder not found")
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        name = path.name
        if name.startswith(".") or not path.is_file():
            continue
        for suffix in ("_instances.tif", "_instances.tiff"):
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                if stem in found:
                    raise InputError(f"{path}: a second instance map for {stem!r} (also {found[stem].name})")
                found[stem] = path
    if not found:
        raise InputError(
            f"{pred_dir}: no predictions found (expected <name>_instances.tif with "
            "<name>_instances.json and <name>_semantic.png, as written by predict)"
        )
    return found


@dataclass
class _Prediction:
    instances: np.ndarray  # (H, W) ids
    classes: dict[int, int]  # id -> class index
    scores: dict[int, float]
    semantic: np.ndarray  # (H, W) class index + 1


def _prediction_classes(pred_dir: Path, classes: list[str], warnings: list[str]) -> tuple[list[str], np.ndarray]:
    """The predictions' class names in value order, and the map of their semantic values to ``classes``' values.

    The names come from ``<pred_dir>/classes.json`` (written by ``predict``,
    in the model's class order); without it the values are taken to follow
    ``classes`` and a warning says so. A predicted class that the ground
    truth does not know maps to -1 (an error if a map uses it).
    """
    legend = pred_dir / CLASS_LEGEND
    if not legend.exists():
        warnings.append(
            f"{legend} not found: the semantic maps' values are taken to be the ground truth's classes "
            f"({name_list(classes)}) in that order; predict writes this file, re-run it if the model's classes "
            "are in another order"
        )
        pred_classes = list(classes)
    else:
        pred_classes = read_class_legend(legend)
    index = {name: i for i, name in enumerate(classes)}
    lut = np.full(256, -1, np.int64)
    lut[0], lut[_IGNORE] = 0, _IGNORE
    for value, name in enumerate(pred_classes, start=1):
        if name in index and value < _IGNORE:
            lut[value] = index[name] + 1
    return pred_classes, lut


def _read_prediction(stem: str, tif: Path, classes: list[str], pred_classes: list[str], lut: np.ndarray) -> _Prediction:
    """One prediction, its class values and names mapped to the ground truth's ``classes``."""
    json_path = tif.with_name(f"{stem}_instances.json")
    sem_path = tif.with_name(f"{stem}_semantic.png")
    instances = read_label_image(tif)
    records = read_instances_json(json_path)
    semantic = read_label_image(sem_path)
    if semantic.shape != instances.shape:
        raise InputError(
            f"{sem_path}: size {semantic.shape} differs from the instance map {tif.name} {instances.shape}"
        )
    bad = semantic[(semantic > len(pred_classes)) & (semantic != _IGNORE)]
    if bad.size:
        raise InputError(
            f"{sem_path}: class value {int(bad[0])} is larger than the number of the predictions' classes "
            f"({len(pred_classes)}: {name_list(pred_classes)}); values are class index + 1"
        )
    unknown = np.unique(semantic[lut[semantic] < 0])
    if unknown.size:
        name = pred_classes[int(unknown[0]) - 1]
        raise InputError(
            f"{sem_path}: class value {int(unknown[0])} is class {name!r} ({CLASS_LEGEND}), which is not one of "
            f"the ground truth's classes ({name_list(classes)})"
        )
    semantic = lut[semantic]
    index = {name: i for i, name in enumerate(classes)}
    cls: dict[int, int] = {}
    scores: dict[int, float] = {}
    for i, record in enumerate(records):
        try:
            rid = int(record["id"])
            score = float(record["score"])
        except (TypeError, ValueError):
            raise InputError(f"{json_path}: record {i}: id and score must be numbers") from None
        name = record["class"]
        if name not in index:
            raise InputError(
                f"{json_path}: record {i} (id {rid}): unknown class {name!r}; known classes: "
                f"{name_list(classes)}"
            )
        if rid in cls:
            raise InputError(f"{json_path}: instance id {rid} has two records")
        if not math.isfinite(score):
            raise InputError(f"{json_path}: record {i} (id {rid}): score is not finite")
        cls[rid], scores[rid] = index[name], score
    ids, _ = dense_ids(instances)
    missing = [int(v) for v in ids if int(v) not in cls]
    if missing:
        raise InputError(
            f"{json_path}: no record for instance id{'s' if len(missing) > 1 else ''} "
            f"{name_list([str(m) for m in missing])} of {tif.name}"
        )
    # records of ids without pixels cannot match anything; they are dropped
    present = set(ids.tolist())
    cls = {k: v for k, v in cls.items() if k in present}
    scores = {k: v for k, v in scores.items() if k in present}
    return _Prediction(instances, cls, scores, semantic)


# --------------------------------------------------------------------------
# ground truth


@dataclass
class _GtImage:
    semantic: np.ndarray  # (H, W) class index + 1, 255 = ignore
    ignore: np.ndarray  # (H, W) bool
    labels: np.ndarray  # (G,) class index per instance
    instances: np.ndarray | None = None  # (H, W) ids (label-map formats) ...
    ids: np.ndarray | None = None  # (G,) ids in ``instances``
    masks: np.ndarray | None = None  # ... or (G, H, W) masks (COCO)
    source: str = ""


def _majority(index: np.ndarray, semantic: np.ndarray, n_ids: int) -> np.ndarray:
    """Most frequent semantic value (not 0 or 255) of each object; 0 = none.

    ``index`` holds 0 for background and 1..n_ids for the objects.
    """
    if n_ids == 0:
        return np.zeros(0, np.int64)
    flat = index.reshape(-1)
    fg = flat > 0
    rows = flat[fg] - 1
    values = semantic.reshape(-1)[fg].astype(np.int64)
    n_values = int(values.max()) + 1 if values.size else 1
    table = np.bincount(rows * n_values + values, minlength=n_ids * n_values).reshape(n_ids, n_values)
    table[:, 0] = 0
    if n_values > _IGNORE:
        table[:, _IGNORE] = 0
    best = np.argmax(table, axis=1)
    best[table.max(axis=1) == 0] = 0
    return best


def _check_class_values(path: Path, semantic: np.ndarray, n_classes: int, classes: list[str]) -> None:
    bad = semantic[(semantic > n_classes) & (semantic != _IGNORE)]
    if bad.size:
        raise InputError(
            f"{path}: class value {int(bad[0])} but only {n_classes} classes are known "
            f"({name_list(classes)}); values are class index + 1, 255 = ignore"
        )


def _from_label_maps(
    instances: np.ndarray,
    semantic: np.ndarray | None,
    known: dict[int, int],
    source: str,
) -> _GtImage:
    """GT image from an id map, an optional class map and id -> class value (1-based)."""
    ids, index = dense_ids(instances)
    index = index.reshape(instances.shape)
    values = np.array([known.get(int(i), 0) for i in ids], np.int64)
    if semantic is not None and np.any(values == 0):
        voted = _majority(index, semantic, ids.size)
        values = np.where(values == 0, voted, values)
    ignore = np.zeros(instances.shape, bool) if semantic is None else semantic == _IGNORE
    keep = values > 0
    inst = instances
    if not keep.all():  # objects without a class: their pixels are ignored
        dropped = (index > 0) & ~np.r_[True, keep][index]
        ignore |= dropped
        inst = np.where(dropped, 0, instances)
    if semantic is None:
        semantic = np.where(ignore, _IGNORE, np.r_[0, values][index])
    return _GtImage(
        semantic=semantic, ignore=ignore, labels=values[keep] - 1, instances=inst, ids=ids[keep], source=source
    )


class _VocGt:
    format = "voc"

    def __init__(self, root: Path, classes: list[str] | None):
        self.root = root
        self.obj_dir = root / "SegmentationObject"
        self.cls_dir = root / "SegmentationClass"
        for d in (self.obj_dir, self.cls_dir):
            if not d.is_dir():
                raise InputError(f"{d}: folder not found (VOC ground truth needs SegmentationObject/ and SegmentationClass/)")
        if classes is None:
            from ..models.checkpoint import VOC_CLASSES  # imported late: it loads torch

            classes = list(VOC_CLASSES)
        self.classes = list(classes)
        self.stems = {p.stem for p in self.obj_dir.glob("*.png") if not p.name.startswith(".")}

    def load(self, stem: str) -> _GtImage:
        obj_path = self.obj_dir / f"{stem}.png"
        cls_path = self.cls_dir / f"{stem}.png"
        objects = read_label_image(obj_path)
        semantic = read_label_image(cls_path)
        if objects.shape != semantic.shape:
            raise InputError(f"{cls_path}: size {semantic.shape} differs from {obj_path} {objects.shape}")
        _check_class_values(cls_path, semantic, len(self.classes), self.classes)
        border = objects == _IGNORE
        gt = _from_label_maps(np.where(border, 0, objects), semantic, {}, str(obj_path))
        gt.ignore |= border
        return gt


class _LabelsGt:
    format = "labels"

    def __init__(self, root: Path, classes: list[str] | None):
        self.root = root
        self.inst_dir = root / "inst"
        self.sem_dir = root / "sem"
        if not self.inst_dir.is_dir():
            raise InputError(f"{self.inst_dir}: folder not found (label ground truth needs inst/)")
        self.table: dict[str, dict[str, Any]] = {}
        table_path = root / "instances.json"
        if table_path.is_file():
            data = read_json(table_path, "instance class table")
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise InputError(f"{table_path}: expected {{image name: {{instance id: class}}}}")
            self.table = data
        self.table_path = table_path
        self.classes = list(classes) if classes is not None else self._default_classes()
        self.stems = {
            p.stem
            for p in self.inst_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _LABEL_SUFFIXES
        }

    def _default_classes(self) -> list[str]:
        labels = self.root / "labels.json"
        if labels.is_file():
            data = read_json(labels, "ground-truth classes")
            if isinstance(data, dict) and isinstance(data.get("classes"), list):
                return [str(c) for c in data["classes"]]
        meta = self.root.parent / "META.json" if not (self.root / "META.json").is_file() else self.root / "META.json"
        if meta.is_file():
            data = read_json(meta, "ground-truth classes")
            found = data.get("classes") if isinstance(data, dict) else None
            if isinstance(found, list):
                return [str(c) for c in found]
            if isinstance(found, dict):
                try:
                    by_value = {int(k): str(v) for k, v in found.items()}
                except ValueError:
                    raise InputError(f"{meta}: 'classes' keys must be class values 1, 2, ...") from None
                if sorted(by_value) == list(range(1, len(by_value) + 1)):
                    return [by_value[v] for v in sorted(by_value)]
                raise InputError(f"{meta}: 'classes' must number the classes 1..N, got {sorted(by_value)}")
        raise InputError(
            f"{self.root}: cannot tell the class names (no labels.json or META.json with 'classes'); "
            "pass the classes in the order of the class values 1, 2, ..."
        )

    def _find(self, folder: Path, stem: str) -> Path | None:
        for suffix in _LABEL_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
        return None

    def load(self, stem: str) -> _GtImage:
        inst_path = self._find(self.inst_dir, stem)
        if inst_path is None:
            raise InputError(f"{self.inst_dir / (stem + '.png')}: instance label image not found")
        instances = read_label_image(inst_path)
        sem_path = self._find(self.sem_dir, stem) if self.sem_dir.is_dir() else None
        semantic = None
        if sem_path is not None:
            semantic = read_label_image(sem_path)
            if semantic.shape != instances.shape:
                raise InputError(f"{sem_path}: size {semantic.shape} differs from {inst_path} {instances.shape}")
            _check_class_values(sem_path, semantic, len(self.classes), self.classes)
        known = self._known_classes(stem)
        if semantic is None:
            ids, _ = dense_ids(instances)
            lacking = [str(int(i)) for i in ids if int(i) not in known]
            if lacking:
                raise InputError(
                    f"{inst_path}: no class for instance id{'s' if len(lacking) > 1 else ''} "
                    f"{name_list(lacking)}: give them in {self.table_path} or add sem/{stem}.png"
                )
        return _from_label_maps(instances, semantic, known, str(inst_path))

    def _known_classes(self, stem: str) -> dict[int, int]:
        """id -> class value (index + 1) from instances.json."""
        entry = self.table.get(stem, {})
        index = {name: i for i, name in enumerate(self.classes)}
        out: dict[int, int] = {}
        for key, value in entry.items():
            where = f"{self.table_path}: [{stem!r}][{key!r}]"
            try:
                iid = int(key)
            except ValueError:
                raise InputError(f"{where}: instance ids must be integers") from None
            if isinstance(value, str):
                if value not in index:
                    raise InputError(f"{where}: unknown class {value!r}; known classes: {name_list(self.classes)}")
                out[iid] = index[value] + 1
            elif isinstance(value, int) and not isinstance(value, bool):
                if not 1 <= value <= len(self.classes):
                    raise InputError(
                        f"{where}: class value {value} outside 1..{len(self.classes)} ({name_list(self.classes)})"
                    )
                out[iid] = value
            else:
                raise InputError(f"{where}: class must be a name or a class value 1..N, got {value!r}")
        return out


class _CocoGt:
    format = "coco"

    def __init__(self, path: Path, classes: list[str] | None):
        from pycocotools.coco import COCO

        data = read_json(path, "COCO instances file")
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise InputError(f"{path}: not a COCO instances file (needs images, annotations, categories)")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO()
                coco.dataset = data
                coco.createIndex()
        except Exception as exc:  # malformed entries: KeyError, TypeError, ...
            raise InputError(f"{path}: malformed COCO file ({type(exc).__name__}: {exc})") from exc
        self.path = path
        self.coco = coco
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        if classes is None:
            classes = [str(c["name"]) for c in cats]
        self.classes = list(classes)
        index = {name: i for i, name in enumerate(self.classes)}
        self.cat_class = {c["id"]: index[c["name"]] for c in cats if c["name"] in index}
        if not self.cat_class:
            raise InputError(
                f"{path}: none of its categories ({name_list([str(c['name']) for c in cats])}) is one of "
                f"the classes {name_list(self.classes)}"
            )
        self.by_stem: dict[str, dict[str, Any]] = {}
        for img in coco.dataset["images"]:
            stem = Path(str(img.get("file_name", ""))).stem
            if stem in self.by_stem:
                raise InputError(f"{path}: two images named {stem!r}")
            self.by_stem[stem] = img
        self.stems = set(self.by_stem)

    def load(self, stem: str) -> _GtImage:
        img = self.by_stem[stem]
        h, w = int(img["height"]), int(img["width"])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[img["id"]], iscrowd=None))
        masks, labels = [], []
        ignore = np.zeros((h, w), bool)
        for ann in anns:
            try:
                mask = self.coco.annToMask(ann).astype(bool)
            except Exception as exc:
                raise InputError(
                    f"{self.path}: annotation {ann.get('id')} of {img.get('file_name')}: bad segmentation ({exc})"
                ) from exc
            if mask.shape != (h, w):
                raise InputError(f"{self.path}: annotation {ann.get('id')}: mask size {mask.shape} != image {(h, w)}")
            cls = self.cat_class.get(ann["category_id"])
            if ann.get("iscrowd") or cls is None:
                ignore |= mask
            else:
                masks.append(mask)
                labels.append(cls)
        stack = np.array(masks, bool).reshape(len(masks), h, w)
        covered = stack.any(axis=0)
        ignore &= ~covered
        semantic = np.zeros((h, w), np.int64)
        for mask, cls in zip(stack, labels):  # later annotations paint over earlier ones
            semantic[mask] = cls + 1
        semantic[ignore] = _IGNORE
        return _GtImage(
            semantic=semantic,
            ignore=ignore,
            labels=np.array(labels, np.int64),
            masks=stack,
            source=f"{self.path} (image {img.get('file_name')})",
        )


def _detect_format(gt_path: Path) -> str:
    if not gt_path.exists():
        raise InputError(f"{gt_path}: ground truth not found")
    if gt_path.is_file():
        if gt_path.suffix.lower() == ".json":
            return "coco"
        raise InputError(f"{gt_path}: a ground-truth file must be a COCO .json file")
    if (gt_path / "SegmentationObject").is_dir():
        return "voc"
    if (gt_path / "inst").is_dir():
        return "labels"
    raise InputError(
        f"{gt_path}: unknown ground-truth layout: expected SegmentationObject/ + SegmentationClass/ "
        "(VOC), inst/ [+ sem/, instances.json] (label images) or a COCO .json file"
    )


def _open_gt(gt_path: Path, gt_format: str, classes: list[str] | None):
    if gt_format not in GT_FORMATS:
        raise ValueError(f"gt_format must be one of {GT_FORMATS}, got {gt_format!r}")
    fmt = _detect_format(gt_path) if gt_format == "auto" else gt_format
    if not gt_path.exists():
        raise InputError(f"{gt_path}: ground truth not found")
    if fmt == "coco":
        if not gt_path.is_file():
            raise InputError(f"{gt_path}: COCO ground truth must be a .json file")
        return _CocoGt(gt_path, classes)
    if not gt_path.is_dir():
        raise InputError(f"{gt_path}: {fmt} ground truth must be a folder")
    return _VocGt(gt_path, classes) if fmt == "voc" else _LabelsGt(gt_path, classes)


# --------------------------------------------------------------------------
# evaluation


def _score_image(acc: APAccumulator, truth: _GtImage, pred: _Prediction | None, where: Path | None, k: int) -> np.ndarray:
    """Add one image's instances to ``acc``; return its semantic confusion. ``pred`` None: an empty prediction."""
    shape = truth.semantic.shape
    if pred is None:  # nothing predicted: every object missed, every pixel background
        acc.add_iou(np.zeros((0, truth.labels.size)), [], [], truth.labels)
        return semantic_confusion(np.zeros(shape, np.int64), truth.semantic, k + 1, _IGNORE)
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
    return semantic_confusion(pred.semantic, truth.semantic, k + 1, _IGNORE)


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
    predictions = _find_predictions(pred_dir)
    gt = _open_gt(gt_path, gt_format, list(classes) if classes is not None else None)
    names = gt.classes
    orphans = [stem for stem in predictions if stem not in gt.stems]
    if orphans:
        first = predictions[orphans[0]]
        raise InputError(
            f"{first}: no ground truth for image {orphans[0]!r} in {gt_path}"
            + (f" ({len(orphans)} predictions lack ground truth: {name_list(orphans)})" if len(orphans) > 1 else "")
        )
    warnings: list[str] = []
    pred_classes, lut = _prediction_classes(pred_dir, names, warnings)
    unpredicted = sorted(gt.stems - set(predictions))
    if unpredicted:
        how = "left out (only_predicted)" if only_predicted else "scored as empty predictions (every object missed)"
        warnings.append(f"{pred_dir}: {len(unpredicted)} ground-truth image(s) have no prediction, {how}: {name_list(unpredicted)}")
    k = len(names)
    acc = APAccumulator(iou_thresholds, num_classes=k)
    confusion = np.zeros((k + 1, k + 1), np.int64)
    for stem, tif in predictions.items():
        confusion += _score_image(acc, gt.load(stem), _read_prediction(stem, tif, names, pred_classes, lut), tif, k)
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
