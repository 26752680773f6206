"""What the Project panel does, without Qt or napari: moving through a project,
turning an instance map into the records the project stores, and saving.

:mod:`napari_irnet._napari.project_widget` turns these into buttons and layers; the
project store itself is :mod:`napari_irnet.store.project`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo, Masks
from ..io.files import OutputError
from ..store.create import open_project
from ..store.project import MANIFEST, Project, ProjectError

__all__ = [
    "STATE_COLOURS",
    "Snapshot",
    "corrections_table",
    "is_project_folder",
    "load_snapshot",
    "predict_all_job",
    "records_for",
    "save_snapshot",
    "step_index",
]

#: list colour per image state (text colour, readable on dark and light themes)
STATE_COLOURS = {"new": "#9a9a9a", "proposed": "#e0b030", "corrected": "#40a0ff", "accepted": "#40c060"}


def is_project_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a napari-irnet project manifest."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def step_index(states: Sequence[str], current: int | None, step: int, skip_accepted: bool = False) -> int | None:
    """The index ``step`` (+1 next, -1 previous) images away from ``current``.

    With ``skip_accepted``, accepted images are passed over. ``current`` None
    starts before the first image (or after the last one for -1). Returns
    None when there is no such image (no wrap-around).
    """
    n = len(states)
    if step == 0 or n == 0:
        return current
    direction = 1 if step > 0 else -1
    i = (-1 if direction > 0 else n) if current is None else current
    while True:
        i += direction
        if not 0 <= i < n:
            return None
        if skip_accepted and states[i] == "accepted":
            continue
        return i


@dataclass
class Snapshot:
    """An image's instance map and classes as shown (or as last stored).

    ``classes`` maps instance id -> class name; ``scores`` id -> score.
    """

    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    state: str = "proposed"
    #: the annotator background (pixels cleared by the annotator; None: none)
    background: np.ndarray | None = None

    def same_as(self, other: Snapshot | None) -> bool:
        """Equal pixels, classes of the present ids, annotator background and state."""
        if other is None or self.state != other.state:
            return False
        if self.labels.shape != other.labels.shape or not np.array_equal(self.labels, other.labels):
            return False
        if not np.array_equal(_flags(self.background, self.labels.shape), _flags(other.background, other.labels.shape)):
            return False
        ids = [int(i) for i in np.unique(self.labels) if i]
        return all(self.classes.get(i) == other.classes.get(i) for i in ids)

    def copy(self) -> Snapshot:
        bg = None if self.background is None else self.background.copy()
        return Snapshot(np.array(self.labels, copy=True), dict(self.classes), dict(self.scores), self.state, bg)

    def edited_from(self, before: Snapshot | None) -> np.ndarray | None:
        """The annotator background after edits of ``before``'s map: its own, plus pixels erased since (None: none)."""
        if before is None or before.labels.shape != self.labels.shape:
            return self.background
        bg = _flags(before.background, self.labels.shape) | ((before.labels != 0) & (self.labels == 0))
        bg &= self.labels == 0
        return bg if bg.any() else None


def _flags(background: np.ndarray | None, shape) -> np.ndarray:
    return np.zeros(shape, bool) if background is None else np.asarray(background, bool)


def load_snapshot(project: Project, name: str) -> tuple[Snapshot | None, str]:
    """The image's current masks (correction, else result) and its state.

    The snapshot is None when the image has no masks yet.

    Raises
    ------
    ProjectError
        A damaged project (a referenced file missing or unreadable).
    """
    state = project.state(name).state
    masks: Masks | None = project.load_masks(name, "current")
    if masks is None:
        return None, state
    labels = np.asarray(masks.labels).astype(np.int32)
    classes = {int(r["id"]): str(r["class"]) for r in masks.records}
    scores = {int(r["id"]): float(r.get("score", 1.0)) for r in masks.records}
    return Snapshot(labels, classes, scores, state, masks.background), state


def default_class(project: Project, name: str) -> str:
    """The class a newly painted instance gets: the image's first label, else the project's first class."""
    labels = project.entry(name).labels
    if labels:
        return labels[0]
    return project.classes[0]


def records_for(
    labels: np.ndarray,
    classes: Mapping[int, str],
    project_classes: Sequence[str],
    fallback: str,
    scores: Mapping[int, float] | None = None,
) -> list[dict[str, Any]]:
    """One record per instance id in ``labels``: id, class (a project class), score.

    Ids without a known class, or with a class the project does not have,
    get ``fallback``.
    """
    scores = scores or {}
    out = []
    for i in np.unique(labels):
        i = int(i)
        if i == 0:
            continue
        cls = classes.get(i)
        if cls not in project_classes:
            cls = fallback
        out.append({"id": i, "class": cls, "score": float(scores.get(i, 1.0))})
    return out


def save_snapshot(project: Project, name: str, snap: Snapshot) -> str | None:
    """Store ``snap`` as the image's correction (state corrected or accepted).

    Returns None on success, else a message saying why nothing was stored
    (the project's previous correction is then unchanged).
    """
    state = "accepted" if snap.state == "accepted" else "corrected"
    records = records_for(snap.labels, snap.classes, project.classes, default_class(project, name), snap.scores)
    try:
        project.save_correction(name, snap.labels, records, state=state, background=snap.background)
    except (OutputError, ProjectError, OSError, ValueError) as exc:
        return f"{name}: not saved ({exc})"
    return None


def corrections_table(snap: Snapshot, accepted: bool, edited: bool = True) -> dict[int, InstanceInfo]:
    """The IRNet panel's instance table for a stored map: every instance protected.

    ``accepted`` images give accepted instances; corrected ones edited
    instances (a re-run keeps them); ``edited`` False gives proposals.
    """
    state = "accepted" if accepted else ("edited" if edited else "proposed")
    return {
        int(i): InstanceInfo(snap.classes.get(int(i), ""), float(snap.scores.get(int(i), 1.0)), state)
        for i in np.unique(snap.labels)
        if i
    }


def predict_all_job(project: Project, device: str = "auto", should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
    """The command line's ``predict --project`` as a generator for the panel's worker.

    Yields the number of images to predict first, then one
    :class:`~napari_irnet.store.batch.BatchEvent` per image (after its result
    is stored, so stopping loses nothing); corrected and accepted images are
    never touched. Stops early once ``should_stop()`` is true.
    """
    from ..store.batch import ProjectPrediction

    run = ProjectPrediction(project, device=device)
    yield len(run)
    events = iter(run)
    try:
        for event in events:
            yield event
            if should_stop is not None and should_stop():
                return
    finally:
        events.close()  # releases the project's batch lock at once


def open_project_folder(path: str | os.PathLike[str]) -> Project:
    """Open a project (the folder, or its manifest file)."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    return open_project(p)
