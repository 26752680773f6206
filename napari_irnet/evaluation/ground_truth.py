"""The ground truth to score against, in one of three layouts.

Ground truth comes in one of three layouts (``gt_format="auto"`` picks by what
``gt_path`` is; :func:`open_ground_truth`):

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
region.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import InputError, name_list, read_json
from ..io.images import read_label_image
from .overlap import dense_ids

__all__ = [
    "GT_FORMATS",
    "IGNORE",
    "GtImage",
    "open_ground_truth",
]


#: accepted values of ``gt_format``
GT_FORMATS = ("auto", "voc", "labels", "coco")


_LABEL_SUFFIXES = (".png", ".tif", ".tiff")


IGNORE = 255


@dataclass
class GtImage:
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
    if n_values > IGNORE:
        table[:, IGNORE] = 0
    best = np.argmax(table, axis=1)
    best[table.max(axis=1) == 0] = 0
    return best


def _check_class_values(path: Path, semantic: np.ndarray, n_classes: int, classes: list[str]) -> None:
    bad = semantic[(semantic > n_classes) & (semantic != IGNORE)]
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
) -> GtImage:
    """GT image from an id map, an optional class map and id -> class value (1-based)."""
    ids, index = dense_ids(instances)
    index = index.reshape(instances.shape)
    values = np.array([known.get(int(i), 0) for i in ids], np.int64)
    if semantic is not None and np.any(values == 0):
        voted = _majority(index, semantic, ids.size)
        values = np.where(values == 0, voted, values)
    ignore = np.zeros(instances.shape, bool) if semantic is None else semantic == IGNORE
    keep = values > 0
    inst = instances
    if not keep.all():  # objects without a class: their pixels are ignored
        dropped = (index > 0) & ~np.r_[True, keep][index]
        ignore |= dropped
        inst = np.where(dropped, 0, instances)
    if semantic is None:
        semantic = np.where(ignore, IGNORE, np.r_[0, values][index])
    return GtImage(
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

    def load(self, stem: str) -> GtImage:
        obj_path = self.obj_dir / f"{stem}.png"
        cls_path = self.cls_dir / f"{stem}.png"
        objects = read_label_image(obj_path)
        semantic = read_label_image(cls_path)
        if objects.shape != semantic.shape:
            raise InputError(f"{cls_path}: size {semantic.shape} differs from {obj_path} {objects.shape}")
        _check_class_values(cls_path, semantic, len(self.classes), self.classes)
        border = objects == IGNORE
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

    def load(self, stem: str) -> GtImage:
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

    def load(self, stem: str) -> GtImage:
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
        semantic[ignore] = IGNORE
        return GtImage(
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


def open_ground_truth(gt_path: Path, gt_format: str, classes: list[str] | None):
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
