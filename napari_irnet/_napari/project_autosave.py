"""The Project panel's autosave: the shown image's ``instances`` layer, stored in the project.

Edits of the layer (brush, fill, eraser) are saved :data:`AUTOSAVE_MS`
after the last change, and at once when the panel asks (Next, Previous,
another image, Accept, closing); the image becomes *corrected*. Once the
IRNet panel has run on the shown image, it stores every edit in the project
itself (the viewer context's session of the image): then only the list's
state is brought up to date. A failed save (read-only project, full disk)
is reported; the edits stay in memory and are saved with the next
successful save.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ..annotation.masks import Masks, cleared_since, instance_ids
from ..store.project import Project, ProjectError
from .project_jobs import save_shown

#: ms of quiet after the last edit before it is saved
AUTOSAVE_MS = 500


class Autosave:
    """Stores the shown image's instances layer in the project.

    ``project()`` and ``current_name()`` give the open project and the image
    shown; ``panel_session()`` the IRNet panel's session when it is on the
    shown image; ``set_state(name, state)`` shows an image's new state;
    ``status(text)`` says what happened.
    """

    def __init__(
        self,
        parent,
        project: Callable[[], Project | None],
        current_name: Callable[[], str | None],
        panel_session: Callable[[], object],
        set_state: Callable[[str, str], None],
        status: Callable[[str], None],
    ) -> None:
        self._project, self._current_name, self._panel_session = project, current_name, panel_session
        self._set_state, self._status = set_state, status
        self.layer = None  # the Labels layer autosaved
        self.saved: Masks | None = None  # what the project holds for the shown image
        self.person_change = False  # a brush stroke or an edit since the last save
        self.unsaved: dict[str, Masks] = {}  # image name -> edits a save failed to store
        self.closed = False
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save_now)

    @property
    def waiting(self) -> bool:
        """A save is due (the timer runs)."""
        return not self.closed and self._timer.isActive()

    # ------------------------------------------------------------------ the layer
    def adopt(self, layer) -> None:
        """Autosave this Labels layer from now on."""
        old = self.layer
        if old is not None and old is not layer:
            self.release()
        self.layer = layer
        layer.events.paint.connect(self._on_person_edit)
        layer.events.labels_update.connect(self._on_person_edit)
        layer.events.data.connect(self._on_layer_changed)
        layer.events.features.connect(self._on_layer_changed)

    def release(self) -> None:
        """Stop autosaving the layer."""
        layer, self.layer = self.layer, None
        if layer is None:
            return
        for emitter, cb in ((layer.events.paint, self._on_person_edit), (layer.events.labels_update, self._on_person_edit),
                            (layer.events.data, self._on_layer_changed), (layer.events.features, self._on_layer_changed)):  # fmt: skip
            emitter.disconnect(cb)

    def forget(self) -> None:
        """Another image is shown: nothing saved of it yet, no edit."""
        self.release()
        self.saved = None
        self.person_change = False

    def _on_person_edit(self, *_) -> None:
        self.person_change = True
        self.schedule()

    def _on_layer_changed(self, *_) -> None:
        self.schedule()

    def schedule(self) -> None:
        if not self.closed and self._project() is not None:
            self._timer.start()

    # ------------------------------------------------------------------ saving
    def snapshot(self) -> Masks | None:
        """The shown instances with their classes, annotator background and state."""
        layer = self.layer
        if layer is None:
            return None
        labels = np.array(layer.data, dtype=np.int32, copy=True)
        base = self.saved
        classes = base.instance_classes if base is not None else {}
        scores = base.instance_scores if base is not None else {}
        state = base.state if base is not None else "new"
        feats = getattr(layer, "features", None)
        if feats is not None and len(feats) and "index" in feats and "class" in feats:
            for idx, cls in zip(feats["index"], feats["class"]):
                if int(idx) and isinstance(cls, str) and cls:
                    classes.setdefault(int(idx), cls)
        if self.person_change and state != "accepted":
            state = "corrected"
        records = [{"id": int(i), "class": classes.get(int(i), ""), "score": scores.get(int(i), 1.0)} for i in instance_ids(labels)]
        # what was cleared before, and what the eraser cleared here
        return Masks(labels, records, state=state, background=cleared_since(base, labels))

    def save_now(self, *_) -> bool:
        """Save the shown image's edits now (and any that failed before); True when all are stored."""
        if not self.closed:
            self._timer.stop()
        if self._project() is None:
            return True
        ok = self._retry_unsaved()
        name = self._current_name()
        if name is None:
            return ok
        if self._panel_session() is not None:
            self.sync_state(name)
            return ok
        snap = self.snapshot()
        if snap is None or not self.person_change or snap.same_as(self.saved):
            return ok
        return self.store(name, snap) and ok

    def sync_state(self, name: str) -> None:
        """Show the state the project holds for ``name`` (after another panel stored into it)."""
        try:
            state = self._project().state(name).state
        except (ProjectError, OSError):
            return
        self._set_state(name, state)

    def store(self, name: str, snap: Masks) -> bool:
        """Store ``snap`` as the image's correction; on failure keep it for the next save."""
        error = save_shown(self._project(), name, snap)
        if error is not None:
            self.unsaved[name] = snap
            self._status(f"NOT SAVED: {error}; the edits are kept in memory")
            show_error(f"napari-irnet: {error}; the edits are kept in memory and saved with the next successful save")
            return False
        self.unsaved.pop(name, None)
        if name == self._current_name():
            self.saved = snap.copy()
            self.person_change = False
        self._set_state(name, "accepted" if snap.state == "accepted" else "corrected")
        self._status(f"{name} saved ({snap.state})")
        return True

    def _retry_unsaved(self) -> bool:
        ok = True
        for name, snap in list(self.unsaved.items()):
            if name == self._current_name():
                continue  # saved with the shown edits
            if save_shown(self._project(), name, snap) is None:
                del self.unsaved[name]
                self._set_state(name, "accepted" if snap.state == "accepted" else "corrected")
            else:
                ok = False
        return ok
