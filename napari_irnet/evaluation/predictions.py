"""The predictions to score, read as the ``predict`` command writes them, per image ``<stem>``:

- ``<stem>_instances.tif``: instance ids (0 = background);
- ``<stem>_instances.json``: one record per id with ``id``, ``class`` (class
  name), ``score``, ``bbox``, ``area``;
- ``<stem>_semantic.png``: class index + 1 per pixel (0 = background).

Classes are matched by name: the records name their class, and
``classes.json`` beside the predictions (written by ``predict``) says which
class each value of the semantic maps is, in the model's order, which need
not be the ground truth's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.files import InputError, name_list
from ..io.images import read_label_image
from ..io.results import CLASS_LEGEND, read_class_legend, read_instances_json
from .ground_truth import IGNORE
from .overlap import dense_ids

__all__ = [
    "find_predictions",
    "PredictedImage",
    "prediction_classes",
    "read_prediction",
]


def find_predictions(pred_dir: Path) -> dict[str, Path]:
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
class PredictedImage:
    instances: np.ndarray  # (H, W) ids
    classes: dict[int, int]  # id -> class index
    scores: dict[int, float]
    semantic: np.ndarray  # (H, W) class index + 1


def prediction_classes(pred_dir: Path, classes: list[str], warnings: list[str]) -> tuple[list[str], np.ndarray]:
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
    lut[0], lut[IGNORE] = 0, IGNORE
    for value, name in enumerate(pred_classes, start=1):
        if name in index and value < IGNORE:
            lut[value] = index[name] + 1
    return pred_classes, lut


def read_prediction(stem: str, tif: Path, classes: list[str], pred_classes: list[str], lut: np.ndarray) -> PredictedImage:
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
    bad = semantic[(semantic > len(pred_classes)) & (semantic != IGNORE)]
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
    return PredictedImage(instances, cls, scores, semantic)
