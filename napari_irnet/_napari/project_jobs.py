"""What the Project panel does, without Qt or napari: moving through a project,
turning an instance map into the records the project stores, and saving.

:mod:`napari_irnet._napari.project_widget` turns these into buttons and layers; the
project store itself is :mod:`napari_irnet.store.project`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo, Masks, instance_ids
from ..io.files import OutputError
from ..store.create import open_project
from ..store.project import MANIFEST, Project, ProjectError

__all__ = [
    "STATE_COLOURS",
    "corrections_table",
    "is_project_folder",
    "load_shown",
    "predict_all_job",
    "records_for",
    "save_shown",
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


def load_shown(project: Project, name: str) -> tuple[Masks | None, str]:
    """The image's current masks (correction, else result) with the image's state, and that state.

    The masks are None when the image has none yet.

    Raises
    ------
    ProjectError
        A damaged project (a referenced file missing or unreadable).
    """
    state = project.state(name).state
    masks: Masks | None = project.load_masks(name, "current")
    if masks is None:
        return None, state
    masks.labels = np.asarray(masks.labels).astype(np.int32)
    masks.state = state
    return masks, state


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


def save_shown(project: Project, name: str, masks: Masks) -> str | None:
    """Store ``masks`` as the image's correction (state corrected or accepted).

    Returns None on success, else a message saying why nothing was stored
    (the project's previous correction is then unchanged).
    """
    state = "accepted" if masks.state == "accepted" else "corrected"
    records = records_for(masks.labels, masks.instance_classes, project.classes, default_class(project, name), masks.instance_scores)
    try:
        project.save_correction(name, masks.labels, records, state=state, background=masks.background)
    except (OutputError, ProjectError, OSError, ValueError) as exc:
        return f"{name}: not saved ({exc})"
    return None


def corrections_table(masks: Masks, accepted: bool, edited: bool = True) -> dict[int, InstanceInfo]:
    """The IRNet panel's instance table for a stored map: every instance protected.

    ``accepted`` images give accepted instances; corrected ones edited
    instances (a re-run keeps them); ``edited`` False gives proposals.
    """
    state = "accepted" if accepted else ("edited" if edited else "proposed")
    classes, scores = masks.instance_classes, masks.instance_scores
    return {int(i): InstanceInfo(classes.get(int(i), ""), scores.get(int(i), 1.0), state) for i in instance_ids(masks.labels)}


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
