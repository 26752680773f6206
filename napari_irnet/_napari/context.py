"""What the panels of one viewer share, and what they know about each image; no Qt here.

:class:`ViewerContext` is one object per viewer (:meth:`ViewerContext.of`):
the current image layer, the checkpoint and the device in use, the open
project, the images worked on (one :class:`ImageSession` each, with its
stage cache) and the run in progress. Its ``events`` (napari's event
emitters, each event with a ``value``) tell the panels what changed, so that
no panel looks for another or touches another's widgets: the Project panel
sets the image and the checkpoint the IRNet panel works with, the Fine-tune
panel reads and sets the checkpoint and compares on the current image, and a
Run says when it starts and ends (``run_started`` / ``run_finished`` with
``image_id``, ``layer`` and, at the end, ``ok``).

An :class:`ImageSession` is one image the IRNet panel has run on: the run's
result (network outputs and stage cache), its
:class:`~napari_irnet.annotation.session.AnnotationSession` (instances, table,
annotator background, undo: the edit rules live there), the centroid points
and parameters shown, and the store its corrections go to
(:func:`napari_irnet._napari.stores.store_for_layer`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.events import EmitterGroup

from ..annotation.history import EditRecord, History
from ..annotation.masks import InstanceInfo, table_from_records
from ..annotation.session import AnnotationSession
from ..io.files import InputError, OutputError
from ..params import Params
from ..store.fingerprints import image_fingerprint
from ..store.project import ProjectError

if TYPE_CHECKING:  # pragma: no cover
    from ..store.project import Project
    from .jobs import RunResult

#: cache stages whose change gives new instances
INSTANCE_STAGES = frozenset({"centroids", "clusters", "iwalk", "instances"})


@dataclass
class ImageSession:
    """One image the IRNet panel has run on: the run result, the annotation, what is shown."""

    image_id: str
    image_name: str
    image: np.ndarray  # (H, W, 3) uint8, what the networks saw
    store: Any  # FolderStore or ProjectImageStore: where its corrections go
    result: RunResult
    annotation: AnnotationSession
    params: Params = field(default_factory=Params)
    #: centroid points shown (image pixels, y x) and whether a person edited them
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    points_edited: bool = False
    #: picked instances: (id, (y, x)) per click
    picks: list[tuple[int, tuple[float, float]]] = field(default_factory=list)
    #: the last pipeline result applied (instances before the corrections)
    prediction: Any = None
    #: fingerprint of the layer's own data (stored as the corrections' ``data_fingerprint``)
    fingerprint: str = ""
    #: fingerprint of ``image``, the networks' input (computed at the first save)
    input_fingerprint: str = ""

    # the annotation's parts, as the panels and tests read them
    @property
    def labels(self) -> np.ndarray:
        return self.annotation.labels

    @property
    def table(self) -> dict[int, InstanceInfo]:
        return self.annotation.table

    @property
    def state(self) -> str:
        return self.annotation.state

    @property
    def history(self) -> History:
        return self.annotation.history

    @property
    def folder(self) -> Path | None:
        """The corrections folder (None for a project image: the project is its store)."""
        return getattr(self.store, "folder", None)

    @property
    def classes(self) -> list[str]:
        """The image's classes the networks ran with."""
        return list(self.result.classes)

    @property
    def model_classes(self) -> list[str]:
        return list(self.result.model.classes)

    @property
    def edit_classes(self) -> list[str]:
        """Classes offered for edits: the image's first, then the model's others."""
        return list(dict.fromkeys(self.classes + self.model_classes))

    def describe(self) -> str:
        """``"12 instances (2 edited, 0 accepted), corrected"``."""
        counts = self.annotation.counts()
        return f"{sum(counts.values())} instances ({counts['edited']} edited, {counts['accepted']} accepted), {self.state}"

    # ------------------------------------------------------------------ results of the pipeline
    def take_points(self, pred, stages: Iterable[str], before: dict[str, Any], after: dict[str, Any]) -> bool:
        """The re-run's centroids, unless a person placed them; True when the points changed.

        ``before`` and ``after`` (the undo step's snapshots) get the points.
        """
        if not {"centroids", "clusters"} & set(stages) or self.points_edited:
            return False
        before.setdefault("points", (self.points, False))
        self.points = np.asarray(pred.centre_points, dtype=np.float64)
        after["points"] = (self.points, False)
        return True

    def take_proposal(self, pred, name: str, kind: str, before: dict[str, Any], after: dict[str, Any]) -> EditRecord | None:
        """Merge a re-run's instances with the corrections (one undoable step; None for an accepted image)."""
        table = table_from_records(pred.instances.records, self.model_classes)
        return self.annotation.apply_proposal(pred.instances.labels, table, name, kind, before, after)

    def restore_points(self, snap: dict[str, Any]) -> bool:
        """The centroid points of an undone or redone step; True when the step had any."""
        if "points" not in snap:
            return False
        pts, edited = snap["points"]
        self.points, self.points_edited = np.asarray(pts, dtype=np.float64), bool(edited)
        return True

    # ------------------------------------------------------------------ storage
    def load_stored(self) -> tuple[str, str]:
        """Start from the corrections stored for this image (they win over the proposal).

        Returns (``"info"`` | ``"warning"`` | ``""``, message) for the panel to show.
        """
        try:
            stored = self.store.load()
        except (InputError, ProjectError, OSError, ValueError) as exc:
            return "warning", f"stored corrections not used: {exc}"
        if stored is None:
            return "", ""
        try:
            self.annotation.restore(stored)
        except ValueError as exc:
            return "warning", f"stored corrections not used: {exc}"
        saved = f", saved {stored.updated}" if stored.updated else ""
        return "info", f"loaded the corrections of {self.image_name} ({stored.state}{saved})"

    def store_proposal(self) -> str | None:
        """In a project, the run's proposal is stored as the image's result (the store decides; a folder keeps none).

        Returns None, or why it was not stored.
        """
        pred = self.prediction
        corr = AnnotationSession.from_prediction(pred, self.model_classes, self.classes).to_masks()
        try:
            self.store.save_proposal(corr, pred.semantic, self.model_classes, self.result.checkpoint, self.params, self.classes)
        except (OutputError, ProjectError, OSError, ValueError) as exc:
            return f"the proposal is not stored: {exc}"
        return None

    def save(self) -> str | None:
        """Store the corrections in the image's store (a pure proposal: nothing); returns None, or why they were not saved."""
        ann = self.annotation
        if not self.input_fingerprint:
            self.input_fingerprint = image_fingerprint(self.image)
        try:
            if not ann.has_corrections:
                self.store.clear()
                return None
            corr = ann.to_masks(
                image_name=self.image_name,
                fingerprint=self.input_fingerprint,
                data_fingerprint=self.fingerprint,
                checkpoint=self.result.checkpoint,
                params=self.params.to_dict(),
            )
            self.store.save(corr)
        except (OutputError, InputError, OSError, ValueError) as exc:
            return f"corrections not saved: {exc}"
        return None

    def accept(self) -> str | None:
        """Accept every instance and the image, and store that; returns None, or why it was not saved."""
        self.annotation.accept()
        return self.save()


def _unwrapped(obj):
    """The object behind the proxy napari gives plugin widgets (the viewer, its layers), so that ``is`` compares objects."""
    return getattr(obj, "__wrapped__", obj)


_contexts: dict[int, ViewerContext] = {}  # id of a viewer -> its context (dropped with the viewer)


class ViewerContext:
    """What the panels of one viewer share (see the module's description); one per viewer."""

    def __init__(self) -> None:
        self.events = EmitterGroup(
            source=self, image=None, checkpoint=None, device=None, project=None, current=None, run_started=None, run_finished=None
        )
        self._image = None
        self._checkpoint = ""
        self._device = "auto"
        self._project: Project | None = None
        self._projects: dict[str, Project] = {}  # project root -> the Project opened for it
        self._sessions: dict[str, ImageSession] = {}
        self._current: ImageSession | None = None
        #: the image id of the run in progress (None: no run)
        self.running: str | None = None

    @classmethod
    def of(cls, viewer) -> ViewerContext:
        """The context of ``viewer`` (made at the first call; the panels of one viewer get the same one)."""
        viewer = _unwrapped(viewer)
        key = id(viewer)
        context = _contexts.get(key)
        if context is None:
            context = _contexts[key] = cls()
            weakref.finalize(viewer, _contexts.pop, key, None)
        return context

    # ------------------------------------------------------------------ what the panels set
    @property
    def image(self):
        """The image layer the panels work on."""
        return self._image

    @image.setter
    def image(self, layer) -> None:
        layer = _unwrapped(layer)
        if layer is not self._image:
            self._image = layer
            self.events.image(value=layer)

    @property
    def checkpoint(self) -> str:
        """The checkpoint file the IRNet panel runs ("" when none is chosen)."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, path) -> None:
        path = str(Path(path).expanduser()) if path else ""
        if path != self._checkpoint:
            self._checkpoint = path
            self.events.checkpoint(value=path)

    @property
    def device(self) -> str:
        """The device chosen for the networks ("auto", "cpu", "cuda:0", ...)."""
        return self._device

    @device.setter
    def device(self, device: str) -> None:
        device = str(device or "auto")
        if device != self._device:
            self._device = device
            self.events.device(value=device)

    @property
    def project(self) -> Project | None:
        """The project open in the Project panel (None: none)."""
        return self._project

    @project.setter
    def project(self, project: Project | None) -> None:
        self._project = project
        if project is not None:
            self._projects[str(Path(project.root).resolve())] = project
        self.events.project(value=project)

    def project_at(self, root) -> Project:
        """The project at ``root``: the open one, or one opened once for this viewer."""
        from ..store.create import open_project

        key = str(Path(root).resolve())
        if key not in self._projects:
            self._projects[key] = open_project(key)
        return self._projects[key]

    # ------------------------------------------------------------------ the images worked on
    @property
    def sessions(self) -> dict[str, ImageSession]:
        """Image id -> session, for every image run on in this viewer."""
        return dict(self._sessions)

    def session(self, image_id: str | None) -> ImageSession | None:
        return self._sessions.get(image_id) if image_id else None

    def add(self, session: ImageSession) -> None:
        self._sessions[session.image_id] = session

    def drop(self, image_id: str) -> ImageSession | None:
        """Forget an image's session (its image layer is gone); the current one becomes None if it was that."""
        session = self._sessions.pop(image_id, None)
        if session is not None and session is self._current:
            self.current = None
        return session

    @property
    def current(self) -> ImageSession | None:
        """The session being worked on (None before the first run)."""
        return self._current

    @current.setter
    def current(self, session: ImageSession | None) -> None:
        if session is not self._current:
            self._current = session
            self.events.current(value=session)

    # ------------------------------------------------------------------ runs
    def start_run(self, image_id: str, layer) -> None:
        """A Run of the networks on ``layer`` begins (other panels hand over what they hold of it)."""
        self.running = image_id
        self.events.run_started(value=image_id, image_id=image_id, layer=_unwrapped(layer))

    def end_run(self, image_id: str, layer, ok: bool) -> None:
        """The Run ended: finished (``ok``), failed or cancelled."""
        self.running = None
        self.events.run_finished(value=image_id, image_id=image_id, layer=_unwrapped(layer), ok=ok)


def connect_events(emitters: dict[str, Callable], context: ViewerContext, connect: bool = True) -> None:
    """Connect (or disconnect) ``{event name: callback}`` to the context's events."""
    for name, callback in emitters.items():
        emitter = getattr(context.events, name)
        if connect:
            emitter.connect(callback)
        else:
            emitter.disconnect(callback)
