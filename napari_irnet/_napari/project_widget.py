"""The Project dock widget: walk through a project's images, correct them, accept them.

Plugins ▸ napari-irnet ▸ Project (or drop a project folder on the viewer).
The widget holds no algorithm: the project store is
:mod:`napari_irnet.store.project`, the GUI-free steps
:mod:`napari_irnet._napari.project_jobs`. It assembles the image list
(:mod:`~napari_irnet._napari.widgets.image_list`), Predict all
(:mod:`~napari_irnet._napari.widgets.predict_all`), the autosave
(:mod:`~napari_irnet._napari.project_autosave`) and the hand-over to the
IRNet panel (:mod:`~napari_irnet._napari.project_handover`), which goes
through the viewer's :class:`~napari_irnet._napari.context.ViewerContext`.

- Open project… picks the project folder; the list shows every image with
  its state (new, proposed, corrected, accepted; coloured).
- Choosing an image (the list, Next / Previous, or the viewer shortcuts
  PageDown / PageUp) replaces the previous project image: the image layer,
  its ``instances`` Labels layer (the project's current masks: the
  correction, else the model's proposal; empty for a new image, to paint
  from scratch) and the IRNet panel's stage layers of the previous image.
  The new image becomes the context's image (and the project's checkpoint
  its checkpoint when it has none), so the IRNet panel's Run and sliders
  work on it.
- One store per image: the project. When a Run starts on the shown image
  (the context says so), this panel's edits are stored in the project and
  its layer waits; the IRNet panel makes its own ``instances`` layer from
  the project, saves every edit there itself (with the annotator
  background: pixels the annotator cleared, which no prediction fills
  again), and its proposal becomes the image's result, so it is shown again
  on the next visit without running anything. Until then this panel's
  layer is autosaved.
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
from magicgui.widgets import CheckBox, Container, Label, PushButton
from napari.utils.notifications import show_error, show_warning

from ..annotation.masks import Masks, features_table
from ..io.files import OutputError
from ..store.project import Project, ProjectError
from . import layers
from .context import ViewerContext, connect_events
from .project_autosave import AUTOSAVE_MS, Autosave
from .project_handover import Handover
from .project_jobs import corrections_table, load_shown, open_project_folder, step_index
from .stores import PROJECT_IMAGE_KEY, PROJECT_KEY
from .widgets import row
from .widgets.image_list import ImageList
from .widgets.predict_all import PredictAll
from .workers import start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: viewer shortcuts (napari's own key names); bound with overwrite=True
NEXT_KEY = "PageDown"
PREVIOUS_KEY = "PageUp"


def _load_job(project: Project, name: str) -> tuple[np.ndarray, Masks | None, str]:
    """Read one image and its current masks (in a worker)."""
    image = project.read_image(name)
    snap, state = load_shown(project, name)
    return image, snap, state


class ProjectWidget(Container):
    """Dock widget: a project's images with their states, Next / Previous, Accept, autosave."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False)
        self._viewer = napari_viewer
        self.context = ViewerContext.of(napari_viewer)
        self.project: Project | None = None
        self._index: int | None = None  # the image shown
        self._wanted: int | None = None  # the image being loaded
        self._load_worker = None
        self._generation = 0
        self._image_id: str | None = None
        self._image_layer = None
        self._own_layers: list[Any] = []  # layers this panel added for the current image
        self._closed = False
        self._build()
        self.autosave = Autosave(self.native, lambda: self.project, lambda: self.current_name, self._panel_session, self._set_state, self._set_status)
        self.handover = Handover(
            napari_viewer, self.context, self.autosave, lambda: (self._image_layer, self._image_id), lambda: self.current_name,
            self._forget_layer, self._refresh_controls,
        )  # fmt: skip
        self._connect()
        self._refresh_controls()

    def _build(self) -> None:
        self.open_button = PushButton(text="Open project…", name="open_button")
        self.refresh_button = PushButton(text="Refresh", name="refresh_button", tooltip="Read every image's state again (e.g. after a command-line run)")
        self.images = ImageList(chosen=self._on_row_chosen)
        self.image_list = self.images.list
        self.previous_button = PushButton(text=f"◀ Previous  ({PREVIOUS_KEY})", name="previous_button")
        self.next_button = PushButton(text=f"Next ▶  ({NEXT_KEY})", name="next_button")
        self.skip_accepted = CheckBox(text="skip accepted images", name="skip_accepted", value=True)
        self.accept_button = PushButton(text="Accept image", name="accept_button", tooltip="Save the shown instances and mark the image accepted")
        self.reopen_button = PushButton(text="Reopen", name="reopen_button", tooltip="Take back the acceptance (accepted → corrected)")
        self.predict_all_box = PredictAll(self._on_predicted, self._set_status, self._on_predict_finished)
        self.predict_button = self.predict_all_box.predict_button
        self.status = Label(name="status", value="open a project folder (made with `napari-irnet init`)")
        self.status.native.setWordWrap(True)
        self.extend([
            row(self.open_button, self.refresh_button), self.images, row(self.previous_button, self.next_button),
            self.skip_accepted, row(self.accept_button, self.reopen_button), self.predict_all_box, self.status,
        ])  # fmt: skip

    def _connect(self) -> None:
        for button, action in ((self.open_button, self._browse), (self.refresh_button, self.refresh), (self.previous_button, self.previous),
                               (self.next_button, self.next), (self.accept_button, self.accept), (self.reopen_button, self.reopen),
                               (self.predict_button, self.predict_all)):  # fmt: skip
            button.changed.connect(action)
        self._viewer.layers.events.removing.connect(self._on_layer_removing)
        self._viewer.layers.events.inserted.connect(self.handover.on_layer_inserted)
        self._viewer.bind_key(NEXT_KEY, lambda _viewer: self.next(), overwrite=True)
        self._viewer.bind_key(PREVIOUS_KEY, lambda _viewer: self.previous(), overwrite=True)
        self.native.destroyed.connect(self._on_destroyed)
        connect_events(self.handover.events(), self.context)

    # ------------------------------------------------------------------ state
    @property
    def viewer(self):
        """The viewer the panel is docked in."""
        return self._viewer

    @property
    def idle(self) -> bool:
        """True when no image is loading, no prediction runs and no save waits (tests wait for this)."""
        return self._load_worker is None and self.predict_all_box.worker is None and not self.autosave.waiting

    @property
    def current_name(self) -> str | None:
        """The project image shown (None before the first)."""
        if self.project is None or self._index is None:
            return None
        return self.project.names[self._index]

    @property
    def instances_layer(self):
        """The ``instances`` layer of the shown image that is autosaved (None when none)."""
        return self.autosave.layer

    @property
    def image_layer(self):
        return self._image_layer

    def states(self) -> dict[str, str]:
        """Image name -> state, as the list shows them."""
        if self.project is None:
            return {}
        return dict(zip(self.project.names, self.images.states))

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    def _set_state(self, name: str, state: str) -> None:
        """Show an image's new state in the list."""
        self.images.set_state(name, state)
        if not self._closed:
            self._refresh_controls()

    def _panel_session(self):
        """The IRNet panel's session when it is on the shown image."""
        return self.handover.panel_session()

    def _forget_layer(self, layer) -> None:
        self._own_layers = [ly for ly in self._own_layers if ly is not layer]

    def _refresh_controls(self) -> None:
        has = self.project is not None and bool(self.images.states)
        shown = self._index is not None
        for w in (self.previous_button, self.next_button, self.refresh_button):
            w.enabled = has
        self.predict_all_box.enable(has)
        self.accept_button.enabled = shown and self.autosave.layer is not None
        self.reopen_button.enabled = shown and self.images.states[self._index] == "accepted" if shown else False

    # ------------------------------------------------------------------ opening
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
        self.project, self._index = project, None
        self.autosave.unsaved.clear()
        self.images.fill(project.root.name, project.names, states, None)
        self.handover.point_checkpoint(project)
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
            states = [st.state for st in self.project.states().values()]
        except (ProjectError, OSError) as exc:
            show_error(f"napari-irnet: {exc}")
            return
        self.images.fill(self.project.root.name, self.project.names, states, self._index)
        self._refresh_controls()

    # ------------------------------------------------------------------ moving
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
        i = step_index(self.images.states, start, step, bool(self.skip_accepted.value))
        if i is None:
            self._set_status("no further image" + (" that is not accepted" if self.skip_accepted.value else ""))
            return None
        self.show_image(i)
        return self.project.names[i]

    def _on_row_chosen(self, row: int) -> None:
        if row != self._index:
            self.show_image(row)

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
            self.images.select(self._index)

    def _on_loaded(self, out, generation: int, i: int) -> None:
        if self._closed or generation != self._generation or self.project is None:
            return
        image, snap, state = out
        name = self.project.names[i]
        self.save_now()  # edits made while it loaded
        self._clear_image()
        self._index = i
        self._set_state(name, state)
        self.images.select(i)
        self.autosave.saved = snap.copy() if snap is not None else None
        shown = self.autosave.unsaved.get(name, snap)
        self._image_id = f"p{uuid.uuid4().hex[:8]}"
        entry = self.project.entry(name)
        meta = {"image_id": self._image_id, "labels": list(entry.labels or []), PROJECT_KEY: str(self.project.root), PROJECT_IMAGE_KEY: name}
        self._image_layer = self._viewer.add_image(image, name=Path(name).stem, rgb=True, metadata={layers.META_KEY: meta})
        self._own_layers = [self._image_layer]
        empty = Masks(np.zeros((entry.height, entry.width), np.int32), state=state)
        self._add_instances(shown if shown is not None else empty, accepted=state == "accepted")
        self.handover.point(self.project)
        n = 0 if shown is None else len(np.unique(shown.labels)) - 1
        what = "no masks yet: Run in the IRNet panel, or paint into 'instances'" if shown is None else f"{n} instances"
        self._set_status(f"{name} ({i + 1}/{len(self.images.states)}, {state}): {what}")
        self._refresh_controls()

    def _add_instances(self, snap: Masks, accepted: bool) -> None:
        table = corrections_table(snap, accepted, edited=snap.state != "proposed")
        marker = {"stage": "instances", "image": self._image_id, "classes": self.project.classes,
                  "image_name": self.current_name or "", PROJECT_KEY: str(self.project.root)}  # fmt: skip
        layer = self._viewer.add_labels(
            np.array(snap.labels, dtype=np.int32, copy=True), name="instances", opacity=0.6,
            features=features_table(snap.labels, table), metadata={layers.META_KEY: marker},
        )  # fmt: skip
        self._own_layers.append(layer)
        self.autosave.adopt(layer)
        self._refresh_controls()

    def _clear_image(self) -> None:
        """Remove the previous project image: its layers and the IRNet panel's layers of it."""
        self.autosave.forget()
        old_id = self._image_id
        doomed = [ly for ly in self._own_layers if ly in self._viewer.layers]
        if old_id is not None:
            for layer in list(self._viewer.layers):
                info = layers.stage_of(layer.metadata)
                if info is not None and info.get("image") == old_id and layer not in doomed:
                    doomed.append(layer)
        for layer in doomed:
            self._viewer.layers.remove(layer)
        self._own_layers = []
        self._image_layer = None
        self._image_id = None
        self._index = None

    # ------------------------------------------------------------------ saving, accepting
    def save_now(self, *_) -> bool:
        """Save the shown image's edits now (and any that failed before); True when all are stored.

        Once the IRNet panel works on the shown image it stores every edit in
        the project itself: then only the list's state is brought up to date.
        """
        return self.autosave.save_now()

    def accept(self, *_) -> bool:
        """Save the shown instances and mark the image accepted (also in the IRNet panel)."""
        name = self.current_name
        if name is None or self.autosave.layer is None:
            show_warning("napari-irnet: nothing to accept: show an image with instances first")
            return False
        session = self._panel_session()
        if session is not None:  # the IRNet panel's session stores its acceptance in the project
            error = session.accept() if session.state != "accepted" else None
            if error:
                show_error(f"napari-irnet: {error}")
            self.autosave.sync_state(name)
            self._set_status(f"{name} accepted ({len(session.annotation.instance_ids())} instances)")
            return session.state == "accepted"
        snap = self.autosave.snapshot()
        snap.state = "accepted"
        if snap.same_as(self.autosave.saved):
            return True
        ok = self.autosave.store(name, snap)
        if ok:
            self._set_status(f"{name} accepted ({len(np.unique(snap.labels)) - 1} instances)")
        return ok

    def reopen(self, *_) -> None:
        """Take back the shown image's acceptance (accepted → corrected)."""
        name = self.current_name
        if name is None or self.images.states[self._index] != "accepted":
            return
        try:
            self.project.reopen(name)
        except (ProjectError, OutputError, OSError) as exc:
            show_error(f"napari-irnet: {exc}")
            return
        if self.autosave.saved is not None:
            self.autosave.saved.state = "corrected"
        self._set_state(name, "corrected")
        self._set_status(f"{name} reopened (corrected)")

    # ------------------------------------------------------------------ predict all
    def predict_all(self, *_) -> None:
        """Propose masks for every image that needs them, in the background (``predict --project``)."""
        if self.project is None or self.predict_all_box.worker is not None:
            return
        self.save_now()
        self.predict_all_box.start(self.project, self.context.device)
        self._refresh_controls()

    def stop_predicting(self, *_) -> None:
        """Stop Predict all after the image in progress (its result is kept)."""
        self.predict_all_box.stop()

    def _on_predicted(self, name: str) -> None:
        if self.project is not None:
            self._set_state(name, "proposed")

    def _on_predict_finished(self) -> None:
        self._refresh_controls()
        shown = self._index
        if shown is not None and self.autosave.saved is None and not self.autosave.person_change and self.images.states[shown] == "proposed":
            self.show_image(shown)  # the shown image got its proposal: show it

    # ------------------------------------------------------------------ closing
    def _on_layer_removing(self, event) -> None:
        """Our instances layer is being removed (by the user, or the viewer closing): save it first."""
        try:
            layer = self._viewer.layers[event.index]
        except (IndexError, AttributeError, TypeError):
            return
        if layer == self.autosave.layer:
            self.save_now()

    def _on_destroyed(self, *_) -> None:
        """The panel is gone (viewer closed): store what is not stored yet."""
        self._closed = True  # the Qt parts may be gone: no status, list or timer from here on
        self.images.closed = self.autosave.closed = True
        self.predict_all_box.close()
        connect_events(self.handover.events(), self.context, connect=False)
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
