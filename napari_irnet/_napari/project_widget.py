"""The Project dock widget: walk through a project's images, correct them, accept them.

Plugins ▸ napari-irnet ▸ Project (or drop a project folder on the viewer).
The widget holds no algorithm: the project store is
:mod:`napari_irnet.core.project`, the GUI-free steps :mod:`napari_irnet._napari.project_jobs`.

- Open project… picks the project folder; the list shows every image with
  its state (new, proposed, corrected, accepted; coloured).
- Choosing an image (the list, Next / Previous, or the viewer shortcuts
  PageDown / PageUp) replaces the previous project image: the image layer,
  its ``instances`` Labels layer (the project's current masks: the
  correction, else the model's proposal; empty for a new image, to paint
  from scratch) and the IRNet panel's stage layers
  of the previous image. The IRNet panel is pointed at the new image (and
  given the project's checkpoint when it has none), so Run and the sliders
  work on it.
- One store per image: the project. Once the IRNet panel has run on the
  shown image it saves every edit there itself (with the annotator
  background: pixels the annotator cleared, which no prediction fills
  again), and a Run's proposal becomes the image's result, so it is shown
  again on the next visit without running anything. Before a Run, edits of
  this panel's ``instances`` layer (brush, fill, eraser) are saved here 500 ms
  after the last change, and at once on Next, Previous, another image, Accept
  and when the viewer closes; the image becomes *corrected*. A failed save
  (read-only project, full disk) is reported; the edits stay in memory and
  are saved with the next successful save.
- Accept marks the image *accepted* (Reopen takes that back).
- Predict all runs the command line's ``predict --project`` in the
  background (progress, Stop): every image that needs a proposal; corrected
  and accepted images are never touched.
- Moving to another image removes the previous image's layers, and the IRNet
  panel frees what it held for it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, EmptyWidget, Label, ProgressBar, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QVBoxLayout

from ..core.edits import features_table
from ..core.io import OutputError
from ..core.project import Project, ProjectError
from . import layers as _layers
from .context import ViewerContext, connect_events
from .project_jobs import (
    STATE_COLOURS,
    Snapshot,
    corrections_table,
    load_snapshot,
    open_project_folder,
    predict_all_job,
    save_snapshot,
    step_index,
)
from .stores import PROJECT_IMAGE_KEY, PROJECT_KEY
from .workers import start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: ms of quiet after the last edit before it is saved
AUTOSAVE_MS = 500
#: viewer shortcuts (napari's own key names); bound with overwrite=True
NEXT_KEY = "PageDown"
PREVIOUS_KEY = "PageUp"

#: the stage a project instances layer is moved to while the IRNet panel makes its own
_HANDED_OVER = "project instances"


def _load_job(project: Project, name: str) -> tuple[np.ndarray, Snapshot | None, str]:
    """Read one image and its current masks (in a worker)."""
    image = project.read_image(name)
    snap, state = load_snapshot(project, name)
    return image, snap, state


class ProjectWidget(Container):
    """Dock widget: a project's images with their states, Next / Previous, Accept, autosave."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False)
        self._viewer = napari_viewer
        self.context = ViewerContext.of(napari_viewer)
        self.project: Project | None = None
        self._states: list[str] = []
        self._index: int | None = None  # the image shown
        self._wanted: int | None = None  # the image being loaded
        self._load_worker = None
        self._generation = 0
        self._image_id: str | None = None
        self._image_layer = None
        self._instances = None  # the Labels layer autosaved
        self._own_layers: list[Any] = []  # layers this panel added for the current image
        self._saved: Snapshot | None = None  # what the project holds for the current image
        self._person_change = False  # a brush stroke or an edit since the last save
        self._unsaved: dict[str, Snapshot] = {}  # image name -> edits a save failed to store
        self._updating_list = False
        self._closed = False
        self._handed_over = None  # our instances layer while the IRNet panel runs on the image
        self._predict_worker = None
        self._stop_predict = False

        self.open_button = PushButton(text="Open project…", name="open_button")
        self.refresh_button = PushButton(text="Refresh", name="refresh_button", tooltip="Read every image's state again (e.g. after a command-line run)")
        self.project_label = Label(name="project_label", value="no project open")
        self.project_label.native.setWordWrap(True)
        self.image_list = QListWidget()
        self.image_list.setMinimumHeight(160)
        holder = EmptyWidget(name="images", label="images")
        box = holder.native.layout()
        if box is None:
            box = QVBoxLayout()
            holder.native.setLayout(box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.image_list)
        self.previous_button = PushButton(text=f"◀ Previous  ({PREVIOUS_KEY})", name="previous_button")
        self.next_button = PushButton(text=f"Next ▶  ({NEXT_KEY})", name="next_button")
        self.skip_accepted = CheckBox(text="skip accepted images", name="skip_accepted", value=True)
        self.accept_button = PushButton(text="Accept image", name="accept_button", tooltip="Save the shown instances and mark the image accepted")
        self.reopen_button = PushButton(text="Reopen", name="reopen_button", tooltip="Take back the acceptance (accepted → corrected)")
        self.predict_button = PushButton(text="Predict all", name="predict_button")
        self.predict_button.tooltip = "Propose masks for every image that needs them (new, or made by another model), in the background"
        self.stop_button = PushButton(text="Stop", name="stop_button", enabled=False, tooltip="Stop after the image in progress")
        self.progress = ProgressBar(name="progress", min=0, max=1, value=0, visible=False)
        self.status = Label(name="status", value="open a project folder (made with `napari-irnet init`)")
        self.status.native.setWordWrap(True)

        def row(*widgets) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        self.extend(
            [
                row(self.open_button, self.refresh_button),
                self.project_label,
                holder,
                row(self.previous_button, self.next_button),
                self.skip_accepted,
                row(self.accept_button, self.reopen_button),
                row(self.predict_button, self.stop_button),
                self.progress,
                self.status,
            ]
        )

        self._autosave_timer = QTimer(self.native)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_MS)
        self._autosave_timer.timeout.connect(self.save_now)

        self.open_button.changed.connect(self._browse)
        self.refresh_button.changed.connect(self.refresh)
        self.previous_button.changed.connect(self.previous)
        self.next_button.changed.connect(self.next)
        self.accept_button.changed.connect(self.accept)
        self.reopen_button.changed.connect(self.reopen)
        self.predict_button.changed.connect(self.predict_all)
        self.stop_button.changed.connect(self.stop_predicting)
        self.image_list.currentRowChanged.connect(self._on_row_changed)
        self._viewer.layers.events.removing.connect(self._on_layer_removing)
        self._viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._viewer.bind_key(NEXT_KEY, lambda _viewer: self.next(), overwrite=True)
        self._viewer.bind_key(PREVIOUS_KEY, lambda _viewer: self.previous(), overwrite=True)
        self.native.destroyed.connect(self._on_destroyed)
        connect_events(self._context_events(), self.context)
        self._refresh_controls()

    # ------------------------------------------------------------------
    # helpers

    @property
    def idle(self) -> bool:
        """True when no image is loading, no prediction runs and no save waits (tests wait for this)."""
        waiting = not self._closed and self._autosave_timer.isActive()
        return self._load_worker is None and self._predict_worker is None and not waiting

    @property
    def current_name(self) -> str | None:
        """The project image shown (None before the first)."""
        if self.project is None or self._index is None:
            return None
        return self.project.names[self._index]

    @property
    def instances_layer(self):
        """The ``instances`` layer of the shown image that is autosaved (None when none)."""
        return self._instances

    @property
    def image_layer(self):
        return self._image_layer

    def states(self) -> dict[str, str]:
        """Image name -> state, as the list shows them."""
        if self.project is None:
            return {}
        return dict(zip(self.project.names, self._states))

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    def _context_events(self) -> dict:
        return {"run_started": self._on_run_started, "run_finished": self._on_run_finished}

    def _panel_session(self):
        """The IRNet panel's session when it is on the shown image."""
        session = self.context.current
        if session is None or self._image_id is None or session.image_id != self._image_id:
            return None
        return session

    def _refresh_controls(self) -> None:
        has = self.project is not None and bool(self._states)
        shown = self._index is not None
        for w in (self.previous_button, self.next_button, self.refresh_button):
            w.enabled = has
        self.predict_button.enabled = has and self._predict_worker is None
        self.stop_button.enabled = self._predict_worker is not None
        self.accept_button.enabled = shown and self._instances is not None
        self.reopen_button.enabled = shown and self._states[self._index] == "accepted" if shown else False

    # ------------------------------------------------------------------
    # the list

    def _row_text(self, i: int) -> str:
        return f"{self.project.names[i]}  —  {self._states[i]}"

    def _fill_list(self) -> None:
        self._updating_list = True
        try:
            self.image_list.clear()
            for i, state in enumerate(self._states):
                item = QListWidgetItem(self._row_text(i))
                item.setForeground(QColor(STATE_COLOURS.get(state, "#9a9a9a")))
                item.setToolTip(f"state: {state}")
                self.image_list.addItem(item)
            if self._index is not None:
                self.image_list.setCurrentRow(self._index)
        finally:
            self._updating_list = False

    def _set_state(self, name: str, state: str) -> None:
        """Record an image's new state in the list."""
        i = self.project.names.index(name)
        self._states[i] = state
        if self._closed:
            return
        item = self.image_list.item(i)
        if item is not None:
            item.setText(self._row_text(i))
            item.setForeground(QColor(STATE_COLOURS.get(state, "#9a9a9a")))
            item.setToolTip(f"state: {state}")
        self._show_counts()
        self._refresh_controls()

    def _show_counts(self) -> None:
        if self.project is None:
            return
        counts = {s: self._states.count(s) for s in STATE_COLOURS}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self.project_label.value = f"{self.project.root.name}: {len(self._states)} images ({text})"

    def _on_row_changed(self, row: int) -> None:
        if self._updating_list or row < 0 or row == self._index:
            return
        self.show_image(row)

    # ------------------------------------------------------------------
    # opening

    def _browse(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        start = str(self.project.root.parent) if self.project is not None else ""
        path = QFileDialog.getExistingDirectory(self.native, "Open a napari-irnet project folder", start)
        if path:
            self.open_project(path)

    def open_project(self, path: str | Path, show_first: bool = True) -> Project | None:
        """Open the project folder ``path``; show its first image to work on.

        The first image shown is the first one not accepted when "skip
        accepted images" is ticked, else the first one.
        """
        try:
            project = open_project_folder(path)
            states = [st.state for st in project.states().values()]
        except (ProjectError, OSError) as exc:
            show_error(f"napari-irnet: cannot open the project: {exc}")
            self._set_status(f"cannot open {path}: {exc}")
            return None
        self.save_now()
        self._clear_image()
        self.context.project = project  # the IRNet panel stores this image's corrections in the same project
        self.project, self._states, self._index = project, states, None
        self._unsaved.clear()
        self._fill_list()
        self._show_counts()
        self._point_panel_checkpoint()
        self._set_status(f"opened {project.root}")
        self._refresh_controls()
        if show_first and states:
            first = step_index(states, None, 1, bool(self.skip_accepted.value))
            self.show_image(first if first is not None else 0)
        return project

    def refresh(self, *_) -> None:
        """Read every image's state again."""
        if self.project is None:
            return
        self.save_now()
        try:
            self._states = [st.state for st in self.project.states().values()]
        except (ProjectError, OSError) as exc:
            show_error(f"napari-irnet: {exc}")
            return
        self._fill_list()
        self._show_counts()
        self._refresh_controls()

    # ------------------------------------------------------------------
    # moving

    def next(self, *_) -> str | None:
        """Show the next image (passing over accepted ones when asked); returns its name."""
        return self._step(+1)

    def previous(self, *_) -> str | None:
        """Show the previous image (passing over accepted ones when asked); returns its name."""
        return self._step(-1)

    def _step(self, step: int) -> str | None:
        if self.project is None:
            return None
        start = self._wanted if self._load_worker is not None and self._wanted is not None else self._index
        i = step_index(self._states, start, step, bool(self.skip_accepted.value))
        if i is None:
            self._set_status("no further image" + (" that is not accepted" if self.skip_accepted.value else ""))
            return None
        self.show_image(i)
        return self.project.names[i]

    def show_image(self, which: int | str) -> None:
        """Show a project image (by index or name), saving the current one's edits first."""
        if self.project is None:
            return
        i = self.project.names.index(which) if isinstance(which, str) else int(which)
        self.save_now()
        self._generation += 1
        self._wanted = i
        name = self.project.names[i]
        self._set_status(f"loading {name} …")
        self._load_worker = start_worker(
            _load_job,
            self.project,
            name,
            _connect={
                "returned": lambda out, g=self._generation, i=i: self._on_loaded(out, g, i),
                "errored": lambda exc, g=self._generation, n=name: self._on_load_error(exc, g, n),
                "finished": lambda g=self._generation: self._on_load_finished(g),
            },
        )

    def _on_load_finished(self, generation: int) -> None:
        if generation == self._generation:
            self._load_worker = None

    def _on_load_error(self, exc: Exception, generation: int, name: str) -> None:
        if self._closed or generation != self._generation:
            return
        self._set_status(f"cannot show {name}: {exc}")
        show_error(f"napari-irnet: cannot show {name}: {exc}")
        if self._index is not None:
            self._updating_list = True
            self.image_list.setCurrentRow(self._index)
            self._updating_list = False

    def _on_loaded(self, out, generation: int, i: int) -> None:
        if self._closed or generation != self._generation or self.project is None:
            return
        image, snap, state = out
        name = self.project.names[i]
        self.save_now()  # edits made while it loaded
        self._clear_image()
        self._index = i
        self._states[i] = state
        self._set_state(name, state)
        self._updating_list = True
        self.image_list.setCurrentRow(i)
        self._updating_list = False
        self._saved = snap.copy() if snap is not None else None
        shown = self._unsaved.get(name, snap)
        self._image_id = f"p{uuid.uuid4().hex[:8]}"
        labels = self.project.entry(name).labels
        meta = {"image_id": self._image_id, "labels": list(labels or []), PROJECT_KEY: str(self.project.root), PROJECT_IMAGE_KEY: name}
        self._image_layer = self._viewer.add_image(image, name=Path(name).stem, rgb=True, metadata={_layers.META_KEY: meta})
        self._own_layers = [self._image_layer]
        entry = self.project.entry(name)
        empty = Snapshot(np.zeros((entry.height, entry.width), np.int32), state=state)
        self._add_instances(shown if shown is not None else empty, accepted=state == "accepted")
        self._point_panel()
        n = 0 if shown is None else len(np.unique(shown.labels)) - 1
        what = "no masks yet: Run in the IRNet panel, or paint into 'instances'" if shown is None else f"{n} instances"
        self._set_status(f"{name} ({i + 1}/{len(self._states)}, {state}): {what}")
        self._refresh_controls()

    def _add_instances(self, snap: Snapshot, accepted: bool) -> None:
        table = corrections_table(snap, accepted, edited=snap.state != "proposed")
        marker = {"stage": "instances", "image": self._image_id, "classes": self.project.classes,
                  "image_name": self.current_name or "", PROJECT_KEY: str(self.project.root)}
        layer = self._viewer.add_labels(
            np.array(snap.labels, dtype=np.int32, copy=True), name="instances", opacity=0.6,
            features=features_table(snap.labels, table), metadata={_layers.META_KEY: marker},
        )
        self._own_layers.append(layer)
        self._adopt(layer)

    def _adopt(self, layer) -> None:
        """Autosave this Labels layer from now on."""
        old = self._instances
        if old is not None and old is not layer:
            self._disconnect(old)
        self._instances = layer
        layer.events.paint.connect(self._on_person_edit)
        layer.events.labels_update.connect(self._on_person_edit)
        layer.events.data.connect(self._on_layer_changed)
        layer.events.features.connect(self._on_layer_changed)
        self._refresh_controls()

    def _disconnect(self, layer) -> None:
        for emitter, cb in ((layer.events.paint, self._on_person_edit), (layer.events.labels_update, self._on_person_edit),
                            (layer.events.data, self._on_layer_changed), (layer.events.features, self._on_layer_changed)):
            emitter.disconnect(cb)

    def _clear_image(self) -> None:
        """Remove the previous project image: its layers and the IRNet panel's layers of it."""
        if self._instances is not None:
            self._disconnect(self._instances)
        self._instances = None
        old_id = self._image_id
        doomed = [ly for ly in self._own_layers if ly in self._viewer.layers]
        if old_id is not None:
            for layer in list(self._viewer.layers):
                info = _layers.stage_of(layer.metadata)
                if info is not None and info.get("image") == old_id and layer not in doomed:
                    doomed.append(layer)
        for layer in doomed:
            self._viewer.layers.remove(layer)
        self._own_layers = []
        self._image_layer = None
        self._image_id = None
        self._saved = None
        self._person_change = False
        self._index = None

    # ------------------------------------------------------------------
    # the IRNet panel

    def _point_panel_checkpoint(self) -> None:
        """The project's checkpoint, for the IRNet panel, unless one is chosen."""
        ckpt = self.project.checkpoint_path if self.project is not None else None
        if not self.context.checkpoint and ckpt is not None and ckpt.is_file():
            self.context.checkpoint = ckpt

    def _point_panel(self) -> None:
        """Let the IRNet panel work on the shown image."""
        if self._image_layer is None:
            return
        self._point_panel_checkpoint()
        self.context.image = self._image_layer

    def _on_run_started(self, event) -> None:
        """The IRNet panel runs on our image: hand it the masks (stored in the project), let it make its own layer."""
        if self._image_layer is None or event.layer != self._image_layer:
            return
        if self._instances is None or self._panel_session() is not None:
            return  # its own layer already, or nothing to hand over
        self.save_now()  # the IRNet panel reads the image's corrections from the project
        layer = self._instances
        meta = dict(layer.metadata)
        meta[_layers.META_KEY] = {**meta[_layers.META_KEY], "stage": _HANDED_OVER}
        layer.metadata = meta
        layer.editable = False  # edits now would miss the run; back if the run fails
        self._handed_over = layer

    def _on_run_finished(self, event) -> None:
        layer, self._handed_over = self._handed_over, None
        if layer is not None and layer == self._instances and layer in self._viewer.layers:
            layer.editable = True  # the run failed or was cancelled: ours again

    def _on_layer_inserted(self, event) -> None:
        """The IRNet panel added the ``instances`` layer of our image: autosave that one."""
        layer = event.value
        info = _layers.stage_of(getattr(layer, "metadata", None))
        if (self._image_id is None or not isinstance(layer, Labels) or info is None or info.get("stage") != "instances"
                or info.get("image") != self._image_id or layer == self._instances):
            return
        old = self._instances
        self._adopt(layer)
        self._person_change = False
        if self.current_name is not None:
            self._sync_state(self.current_name)  # the panel's Run stored its proposal in the project
        if old is not None and old in self._viewer.layers and _layers.stage_of(old.metadata).get("stage") == _HANDED_OVER:
            self._own_layers = [ly for ly in self._own_layers if ly is not old]
            QTimer.singleShot(0, lambda: self._drop_old(old, layer))

    def _drop_old(self, old, new) -> None:
        if old in self._viewer.layers:
            self._viewer.layers.remove(old)
        if new in self._viewer.layers:
            new.name = "instances"

    # ------------------------------------------------------------------
    # autosave

    def _on_person_edit(self, *_) -> None:
        self._person_change = True
        self._schedule_save()

    def _on_layer_changed(self, *_) -> None:
        self._schedule_save()

    def _schedule_save(self) -> None:
        if not self._closed and self.project is not None:
            self._autosave_timer.start()

    def _snapshot(self) -> Snapshot | None:
        """This panel's shown instances with their classes, annotator background and state."""
        layer = self._instances
        if layer is None:
            return None
        labels = np.asarray(layer.data)
        base = self._saved
        classes = dict(base.classes) if base is not None else {}
        scores = dict(base.scores) if base is not None else {}
        state = base.state if base is not None else "new"
        feats = getattr(layer, "features", None)
        if feats is not None and len(feats) and "index" in feats and "class" in feats:
            for idx, cls in zip(feats["index"], feats["class"]):
                if int(idx) and isinstance(cls, str) and cls:
                    classes.setdefault(int(idx), cls)
        if self._person_change and state != "accepted":
            state = "corrected"
        snap = Snapshot(np.array(labels, dtype=np.int32, copy=True), classes, scores, state)
        snap.background = snap.edited_from(base)  # what was cleared before, and what the eraser cleared here
        return snap

    def save_now(self, *_) -> bool:
        """Save the shown image's edits now (and any that failed before); True when all are stored.

        Once the IRNet panel works on the shown image it stores every edit in
        the project itself: then only the list's state is brought up to date.
        """
        if not self._closed:
            self._autosave_timer.stop()
        if self.project is None:
            return True
        ok = self._retry_unsaved()
        name = self.current_name
        if name is None:
            return ok
        if self._panel_session() is not None:
            self._sync_state(name)
            return ok
        snap = self._snapshot()
        if snap is None or not self._person_change or snap.same_as(self._saved):
            return ok
        return self._store(name, snap) and ok

    def _sync_state(self, name: str) -> None:
        """Show the state the project holds for ``name`` (after another panel stored into it)."""
        try:
            state = self.project.state(name).state
        except (ProjectError, OSError):
            return
        if state != self._states[self.project.names.index(name)]:
            self._set_state(name, state)

    def _store(self, name: str, snap: Snapshot) -> bool:
        error = save_snapshot(self.project, name, snap)
        if error is not None:
            self._unsaved[name] = snap
            self._set_status(f"NOT SAVED: {error}; the edits are kept in memory")
            show_error(f"napari-irnet: {error}; the edits are kept in memory and saved with the next successful save")
            return False
        self._unsaved.pop(name, None)
        if name == self.current_name:
            self._saved = snap.copy()
            self._person_change = False
        self._set_state(name, "accepted" if snap.state == "accepted" else "corrected")
        self._set_status(f"{name} saved ({snap.state})")
        return True

    def _retry_unsaved(self) -> bool:
        ok = True
        for name, snap in list(self._unsaved.items()):
            if name == self.current_name:
                continue  # saved with the shown edits
            if save_snapshot(self.project, name, snap) is None:
                del self._unsaved[name]
                self._set_state(name, "accepted" if snap.state == "accepted" else "corrected")
            else:
                ok = False
        return ok

    # ------------------------------------------------------------------
    # accept

    def accept(self, *_) -> bool:
        """Save the shown instances and mark the image accepted (also in the IRNet panel)."""
        name = self.current_name
        if name is None or self._instances is None:
            show_warning("napari-irnet: nothing to accept: show an image with instances first")
            return False
        session = self._panel_session()
        if session is not None:  # the IRNet panel stores its acceptance in the project
            error = session.accept() if session.state != "accepted" else None
            if error:
                show_error(f"napari-irnet: {error}")
            self._sync_state(name)
            self._set_status(f"{name} accepted ({len(session.annotation.instance_ids())} instances)")
            return session.state == "accepted"
        snap = self._snapshot()
        snap.state = "accepted"
        if snap.same_as(self._saved):
            return True
        ok = self._store(name, snap)
        if ok:
            self._set_status(f"{name} accepted ({len(np.unique(snap.labels)) - 1} instances)")
        return ok

    def reopen(self, *_) -> None:
        """Take back the shown image's acceptance (accepted → corrected)."""
        name = self.current_name
        if name is None or self._states[self._index] != "accepted":
            return
        try:
            self.project.reopen(name)
        except (ProjectError, OutputError, OSError) as exc:
            show_error(f"napari-irnet: {exc}")
            return
        if self._saved is not None:
            self._saved.state = "corrected"
        self._set_state(name, "corrected")
        self._set_status(f"{name} reopened (corrected)")

    # ------------------------------------------------------------------
    # predict all

    def predict_all(self, *_) -> None:
        """Propose masks for every image that needs them, in the background (``predict --project``)."""
        if self.project is None or self._predict_worker is not None:
            return
        self.save_now()
        self._stop_predict = False
        device = self.context.device
        self._predict_worker = start_worker(
            predict_all_job,
            self.project,
            device,
            lambda: self._stop_predict,
            _connect={"yielded": self._on_predicted, "errored": self._on_predict_error, "finished": self._on_predict_finished},
        )
        self.progress.visible, self.progress.value = True, 0
        self._set_status("predicting: loading the checkpoint …")
        self._refresh_controls()

    def stop_predicting(self, *_) -> None:
        """Stop Predict all after the image in progress (its result is kept)."""
        if self._predict_worker is not None:
            self._stop_predict = True
            self._set_status("stopping after the image in progress …")

    def _on_predicted(self, item) -> None:
        if self._closed or self.project is None:
            return
        if isinstance(item, int):
            self.progress.max = max(1, item)
            self._set_status(f"predicting {item} image(s)" if item else "every image has an up-to-date proposal already")
            return
        self.progress.value = item.index + 1
        if item.status == "predicted":
            self._set_state(item.name, "proposed")
        what = f"{item.instances} instances" if item.error is None else item.error
        self._set_status(f"{item.index + 1}/{item.total}: {item.name} {item.status} ({what}, {item.seconds:.1f} s)")

    def _on_predict_error(self, exc: Exception) -> None:
        if self._closed:
            return
        self._set_status(f"Predict all failed: {exc}")
        show_error(f"napari-irnet: Predict all failed: {exc}")

    def _on_predict_finished(self) -> None:
        self._predict_worker = None
        if self._closed:
            return
        self.progress.visible = False
        self._refresh_controls()
        shown = self._index
        if shown is not None and self._saved is None and not self._person_change and self._states[shown] == "proposed":
            self.show_image(shown)  # the shown image got its proposal: show it

    # ------------------------------------------------------------------
    # closing

    def _on_layer_removing(self, event) -> None:
        """Our instances layer is being removed (by the user, or the viewer closing): save it first."""
        try:
            layer = self._viewer.layers[event.index]
        except (IndexError, AttributeError, TypeError):
            return
        if layer == self._instances:
            self.save_now()

    def _on_destroyed(self, *_) -> None:
        """The panel is gone (viewer closed): store what is not stored yet."""
        self._closed = True  # the Qt parts may be gone: no status, list or timer from here on
        connect_events(self._context_events(), self.context, connect=False)
        self._stop_predict = True
        try:
            self.save_now()
        except Exception as exc:  # noqa: BLE001 - nothing may escape a Qt destructor callback
            print(f"napari-irnet: could not save on close: {exc}")
        for key in (NEXT_KEY, PREVIOUS_KEY):
            try:
                self._viewer.bind_key(key, None, overwrite=True)
            except Exception:  # noqa: BLE001
                pass


__all__ = ["AUTOSAVE_MS", "NEXT_KEY", "PREVIOUS_KEY", "ProjectWidget"]
