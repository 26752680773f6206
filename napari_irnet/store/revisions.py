"""A project image's masks on disk: revision folders, written whole and never changed.

A result (the model's) or a correction (the annotator's) goes to a new folder
``items/<name>/<kind>-NNNNNN/`` holding ``instances.tif`` (instance ids),
``instances.json`` (one record per instance), ``semantic.png`` (class index
+ 1) and, for a correction with an annotator background, ``background.png``.
The image's ``state.json`` points to a revision only once all its files are
complete (:meth:`~napari_irnet.store.project.Project.save_correction`); what
no state references any more is collected (:func:`collect_garbage`).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import Masks, instance_boxes
from ..io.files import name_list
from ..io.images import read_label_image
from ..io.results import read_instances_json, write_instance_tiff, write_instances_json, write_semantic_png
from .items import ItemState

__all__ = ["BACKGROUND_FILE", "checked_masks", "collect_garbage", "new_revision", "read_revision", "semantic_for_project", "write_revision"]

#: a correction's annotator background (1 where the annotator cleared pixels)
BACKGROUND_FILE = "background.png"
#: what the store writes into an item folder besides state.json: revision folders and temporary files
_REVISION = re.compile(r"(result|correction)-[0-9]{6,}")
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]+\.tmp(\.[A-Za-z0-9]+)?")


def checked_masks(
    name: str,
    instances: np.ndarray,
    records: list[dict[str, Any]],
    semantic: np.ndarray | None,
    classes: Sequence[str],
    shape: tuple[int, int],
    source: str,
    default_score: float | None,
) -> Masks:
    """The masks a revision of image ``name`` will hold, checked: every instance a record of a project class.

    ``records`` give ``id`` and ``class`` (or ``class_id``, an index into
    ``classes``), ``score`` (``default_score`` when missing; None: required)
    and any other keys, kept; ``bbox`` and ``area`` are computed. Without
    ``semantic`` the class map is painted from the instances.

    Raises
    ------
    ValueError
        A map of the wrong size or type, an instance without a record, an
        unknown class, a missing score, semantic values outside the classes.
    """
    inst = np.asarray(instances)
    if inst.shape != shape:
        raise ValueError(f"{name}: instance map has shape {inst.shape}, the image is {shape}")
    if not np.issubdtype(inst.dtype, np.integer) or (inst.size and inst.min() < 0):
        raise ValueError(f"{name}: instance map must hold non-negative integers")
    inst = inst.astype(np.int32 if inst.max(initial=0) < 2**31 else np.int64)
    out = _checked_records(name, inst, records, list(classes), default_score)
    if semantic is None:
        lut = np.zeros(int(inst.max(initial=0)) + 1, np.uint8)
        for rec in out:
            lut[rec["id"]] = list(classes).index(rec["class"]) + 1
        sem = lut[inst]
    else:
        sem = np.asarray(semantic)
        if sem.shape != inst.shape:
            raise ValueError(f"{name}: semantic map has shape {sem.shape}, the image is {inst.shape}")
        if sem.size and (sem.min() < 0 or sem.max() > len(classes)):
            raise ValueError(f"{name}: semantic values must be 0..{len(classes)} (class index + 1)")
        sem = sem.astype(np.uint8)
    return Masks(inst, out, semantic=sem, source=source)


def _checked_records(name: str, inst: np.ndarray, records: list[dict[str, Any]], classes: list[str], default_score: float | None) -> list[dict[str, Any]]:
    """One record per instance of ``inst``, in id order, with its class name, score, bbox and area."""
    boxes = instance_boxes(inst)
    by_id: dict[int, dict[str, Any]] = {}
    for r in records:
        by_id[int(r["id"])] = dict(r)
    missing = [i for i in boxes if i not in by_id]
    if missing:
        raise ValueError(f"{name}: instance id(s) {name_list([str(i) for i in missing])} have no record (class)")
    out = []
    for i, (bbox, area) in boxes.items():
        rec = by_id[i]
        cls = rec.get("class")
        if cls is None and "class_id" in rec:
            cid = int(rec["class_id"])
            if not 0 <= cid < len(classes):
                raise ValueError(f"{name}: instance {i} has class_id {cid}, outside 0..{len(classes) - 1}")
            cls = classes[cid]
        if cls not in classes:
            raise ValueError(f"{name}: instance {i} has unknown class {cls!r}; this project's classes: {name_list(classes, 50)}")
        score = rec.get("score", default_score)
        if score is None:
            raise ValueError(f"{name}: instance {i} has no score")
        rec.pop("class_id", None)
        rec.update(id=i, bbox=bbox, area=area, score=float(score))
        rec["class"] = cls
        out.append(rec)
    return out


def new_revision(folder: Path, kind: str, st: ItemState) -> tuple[int, Path]:
    """The next revision number of an item folder (above every one in use) and its folder, not created yet."""
    used = [0]
    for part in (st.result, st.correction):
        if part:
            used.append(int(part["rev"]))
    if folder.is_dir():
        for p in folder.iterdir():
            prefix, _, number = p.name.partition("-")
            if prefix in ("result", "correction") and number.isdigit():
                used.append(int(number))
    rev = max(used) + 1
    return rev, folder / f"{kind}-{rev:06d}"


def write_revision(target: Path, masks: Masks) -> None:
    """Write ``masks`` into the new folder ``target`` (FileExistsError when another writer took it)."""
    target.mkdir(parents=True, exist_ok=False)
    write_instance_tiff(target / "instances.tif", masks.labels)
    write_instances_json(target / "instances.json", masks.records)
    write_semantic_png(target / "semantic.png", masks.semantic)
    if masks.background is not None and masks.background.any():
        write_semantic_png(target / BACKGROUND_FILE, masks.background.astype(np.uint8), palette=False)


def read_revision(folder: Path, state: str, source: str) -> Masks:
    """The masks in a revision folder (InputError naming a missing or unreadable file)."""
    instances = read_label_image(folder / "instances.tif")
    records = read_instances_json(folder / "instances.json")
    semantic = read_label_image(folder / "semantic.png").astype(np.uint8)
    background = read_label_image(folder / BACKGROUND_FILE) > 0 if (folder / BACKGROUND_FILE).is_file() else None
    return Masks(instances, records, state, background, semantic, source=source)


def collect_garbage(folder: Path, st: ItemState) -> int:
    """Delete what the store wrote in an item folder and ``st`` no longer references: revision folders, temporary files.

    Only entries named as the store names them (``result-NNNNNN``,
    ``correction-NNNNNN``, :func:`~napari_irnet.io.files.atomic_path`'s
    ``.<name>.<hex>.tmp...``) are deleted, never through a symbolic link:
    an item folder that is a link, or an entry that is one, is left alone,
    and so is anything else in the folder. Returns how many were deleted.
    """
    if folder.is_symlink() or folder.parent.is_symlink() or not folder.is_dir():
        return 0
    keep = {f"{kind}-{int(part['rev']):06d}" for kind, part in st.revisions(replaced=True)}
    removed = 0
    for p in folder.iterdir():
        if p.name in keep or p.is_symlink():
            continue
        own_revision = _REVISION.fullmatch(p.name) is not None and p.is_dir()
        own_temp = _TEMP_FILE.fullmatch(p.name) is not None and p.is_file()
        if not (own_revision or own_temp):
            continue
        with contextlib.suppress(OSError):
            if own_revision:
                shutil.rmtree(p)  # does not follow links inside
            else:
                p.unlink()
            removed += 1
    return removed


def semantic_for_project(semantic: np.ndarray, model_classes: Sequence[str], project_classes: Sequence[str]) -> np.ndarray:
    """A semantic map of model class index + 1 as project class index + 1 (classes the project lacks: 0)."""
    lut = np.zeros(len(model_classes) + 1, np.uint8)
    for i, cls in enumerate(model_classes):
        if cls in project_classes:
            lut[i + 1] = list(project_classes).index(cls) + 1
    return lut[np.asarray(semantic)]
