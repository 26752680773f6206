"""An image's one store: where its masks (corrections, proposals) are kept.

Inside a project the project keeps them (:class:`ProjectImageStore`); an
image outside a project keeps them in a folder of its own
(:class:`FolderStore`: beside the image file, or under the user data folder
keyed by the pixels' fingerprint, see :mod:`napari_irnet.store.folder`).
Both are an :class:`ImageStore`: the same ``load`` / ``save`` / ``clear`` /
``save_proposal`` / ``stamp`` of :class:`~napari_irnet.annotation.masks.Masks`,
so the annotation session and the panels never ask which one they have::

    store = FolderStore(corrections_folder("cells", image))   # or ProjectImageStore(project, "img_001.png")
    store.save(session.to_masks())
    masks = store.load()          # None when nothing is stored
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..annotation.masks import Masks, instance_records
from .folder import STATE_FILE as FOLDER_STATE_FILE
from .folder import delete_corrections, load_corrections, save_corrections
from .project import STATE_FILE, Project
from .revisions import semantic_for_project

__all__ = ["FolderStore", "ImageStore", "ProjectImageStore", "file_stamp"]


class ImageStore(Protocol):
    """What every store of one image's masks offers."""

    def load(self) -> Masks | None:
        """The stored corrections, None when there are none (InputError or ProjectError when they are unusable)."""

    def save(self, masks: Masks) -> None:
        """Store the annotator's masks (OutputError when that fails; what was stored stays)."""

    def clear(self) -> None:
        """Nothing of the annotator's is left to keep (a pure proposal)."""

    def save_proposal(self, masks: Masks, semantic=None, model_classes=(), checkpoint=None, params=None, labels_used=None) -> bool:
        """Keep the model's proposal where the store keeps proposals; True when stored."""

    def stamp(self) -> tuple[int, int] | None:
        """Changes when the stored masks change (to notice another writer); None when nothing is stored."""


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file; None when it does not exist."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class FolderStore:
    """The masks of one image in its own folder (an image outside a project).

    ``shape`` and ``fingerprints`` check that stored corrections belong to
    the image (see :func:`~napari_irnet.store.folder.load_corrections`).
    """

    folder: Path
    shape: tuple[int, int] | None = None
    fingerprints: tuple[str, ...] = ()

    def __str__(self) -> str:
        return str(self.folder)

    def load(self) -> Masks | None:
        """The stored corrections, None when there are none (InputError when they are unusable)."""
        return load_corrections(self.folder, shape=self.shape, fingerprints=self.fingerprints)

    def save(self, masks: Masks) -> None:
        """Store the corrections (OutputError when that fails; the old files stay)."""
        save_corrections(self.folder, masks)

    def clear(self) -> None:
        """Nothing left to store (a pure proposal): remove the files."""
        delete_corrections(self.folder)

    def save_proposal(self, masks: Masks, *_, **__) -> bool:
        """A proposal is not stored outside a project (a Run makes it again)."""
        return False

    def stamp(self) -> tuple[int, int] | None:
        """(mtime in ns, size) of the state file, to notice a change; None when there is none."""
        return file_stamp(self.folder / FOLDER_STATE_FILE)


class ProjectImageStore:
    """One project image's masks, kept in the project: the store the panels use for it.

    Instance states (proposed, edited, accepted) are kept in the records,
    the annotator background as the correction's ``background.png``; a
    proposal becomes the image's result.
    """

    def __init__(self, project: Project, name: str) -> None:
        project.entry(name)  # a clear error for an image the project lacks
        self.project, self.name = project, name

    def __str__(self) -> str:
        return f"{self.project.root} ({self.name})"

    def load(self) -> Masks | None:
        """The image's correction, None when it has none."""
        st = self.project.state(self.name)
        masks = self.project.load_masks(self.name, "correction") if st.correction else None
        if masks is None:
            return None
        classes = list(self.project.entry(self.name).labels or [])
        return dataclasses.replace(masks, labels=np.asarray(masks.labels, dtype=np.int32), image_name=self.name, classes=classes)

    def _records(self, masks: Masks) -> list[dict[str, Any]]:
        """Id, class (a project class: the image's first label where it has none), score, state."""
        labels_ = self.project.entry(self.name).labels
        fallback = labels_[0] if labels_ else self.project.classes[0]
        out = []
        for r in instance_records(np.asarray(masks.labels), masks.table, fallback):
            if r["class"] not in self.project.classes:
                r["class"] = fallback
            out.append({k: r[k] for k in ("id", "class", "score", "state")})
        return out

    def save(self, masks: Masks) -> None:
        """Store the annotator's masks (state corrected or accepted) with their annotator background."""
        state = "accepted" if masks.state == "accepted" else "corrected"
        self.project.save_correction(self.name, np.asarray(masks.labels), self._records(masks), state=state, background=masks.background)

    def clear(self) -> None:
        """The annotator discarded every correction: the project's result is the image's masks again."""
        self.project.discard_correction(self.name)

    def stamp(self) -> tuple[int, int] | None:
        """(mtime in ns, size) of the image's state file, to notice a change."""
        return file_stamp(self.project.item_dir(self.name) / STATE_FILE)

    def save_proposal(self, masks: Masks, semantic=None, model_classes=(), checkpoint=None, params=None, labels_used=None) -> bool:
        """Store the model's proposal as the image's result (never over a correction); True when stored.

        ``checkpoint`` and ``params`` made it (they give the result's
        :meth:`~napari_irnet.store.project.Project.model_key`, so a batch
        prediction with the same model skips the image); ``semantic`` is in
        ``model_classes`` order.
        """
        model_key = self.project.model_key(checkpoint, params) if checkpoint is not None else None
        labels = np.asarray(masks.labels)
        if semantic is None:
            semantic = np.zeros(labels.shape, np.uint8)
        else:
            semantic = semantic_for_project(semantic, list(model_classes), self.project.classes)
        records = [{k: r[k] for k in ("id", "class", "score")} for r in self._records(masks)]
        return self.project.save_result(self.name, labels, records, semantic, model_key, labels_used)
