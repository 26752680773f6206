"""The IRNet dock widget: run IRNet on an image, tune it live, correct the result.

Plugins ▸ napari-irnet ▸ IRNet. The widget assembles its parts and connects them:

- its sections (:mod:`napari_irnet._napari.widgets`): input, status with
  Run / Cancel, live parameters, stages shown, corrections;
- the viewer's :class:`~napari_irnet._napari.context.ViewerContext`, shared
  with the Project and Fine-tune panels: the image and the checkpoint shown
  here follow it and set it, the images run on are its sessions;
- :class:`~napari_irnet._napari.model_loader.ModelLoader` (the chosen
  checkpoint, read in the background), :class:`~napari_irnet._napari.runner.Runner`
  (a Run), :class:`~napari_irnet._napari.scheduler.UpdateScheduler` (live
  re-runs, latest wins), :class:`~napari_irnet._napari.layer_sync.LayerSync`
  (the stage layers), :class:`~napari_irnet._napari.edit_actions.EditActions`
  and :class:`~napari_irnet._napari.edit_history.EditHistory` (corrections, undo).

The widget holds no algorithm: the networks and stages run in
:mod:`napari_irnet._napari.jobs`; the corrections, their rules and their
undo are the image's :class:`~napari_irnet.annotation.session.AnnotationSession`;
its corrections go to the image's one store
(:func:`napari_irnet._napari.stores.store_for_layer`). After a run and after
every edit the ``instances`` layer is the active one. Closing the viewer
while a job runs is safe: the panel stops listening to its workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning

from ..params import Params
from . import layers
from .context import INSTANCE_STAGES, ImageSession, ViewerContext, connect_events
from .edit_actions import EditActions
from .edit_history import EditHistory
from .jobs import RunResult
from .layer_sync import LayerSync
from .model_loader import ModelLoader, describe_model
from .runner import RunHooks, Runner
from .scheduler import Request, UpdateScheduler
from .shortcuts import bind_keys, unbind_keys
from .widgets.corrections import CorrectionsBox
from .widgets.input_box import InputBox
from .widgets.parameters import ParameterSliders
from .widgets.stages import StageToggles
from .widgets.status import StatusBox

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: the widest a docked panel may be (pixels)
PANEL_WIDTH = 420


def _forward(part: str, func: Callable) -> Callable:
    """A method of the panel that calls ``func`` of its part ``part`` (same name and description)."""

    def method(self, *args, **kwargs):
        return getattr(getattr(self, part), func.__name__)(*args, **kwargs)

    method.__name__, method.__doc__ = func.__name__, func.__doc__
    return method


class IRNetWidget(Container):
    """Dock widget: image, checkpoint, classes, device, Run; live parameters; stages; corrections."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True, labels=False)
        self._viewer = napari_viewer
        self.context = ViewerContext.of(napari_viewer)
        self._closed = False  # the Qt widgets are gone (viewer closed): workers' late results are dropped
        self._accepted_notice_given = False
        self._listeners: dict[str, Callable] = {}  # image id -> our listener of its annotation
        self._build_sections()
        self._build_parts()
        self._connect()
        self._start()

    # ------------------------------------------------------------------ assembling
    def _build_sections(self) -> None:
        self.loader = ModelLoader(lambda: self.inputs.checkpoint.value, self._on_model_loaded, self._on_load_error)
        self.inputs = InputBox(class_choices=lambda: self.loader.model_classes)
        self.status_box = StatusBox()
        self.sliders = ParameterSliders(on_change=lambda: self.scheduler.slider_moved())
        self.stage_toggles = StageToggles(on_toggle=self._on_show_changed)
        self.corrections = CorrectionsBox(class_choices=self._edit_class_choices)
        self.extend([self.inputs, self.status_box, self.sliders, self.stage_toggles, self.corrections])
        scroll = self.root_native_widget
        if hasattr(scroll, "widget") and scroll.widget() is not None:  # wide enough for the controls, never wider than the dock
            scroll.setMinimumWidth(min(scroll.widget().minimumSizeHint().width() + 24, PANEL_WIDTH))
        # the controls by the names scripts and tests know
        box = self.inputs
        self.image, self.checkpoint, self.classes, self.channels, self.device = box.image, box.checkpoint, box.classes, box.channels, box.device
        self.device_in_use = box.device_in_use
        self.status, self.run_button, self.cancel_button = self.status_box.status, self.status_box.run_button, self.status_box.cancel_button
        self.param_widgets = self.sliders.param_widgets
        self.show_stage, self.legend = self.stage_toggles.show_stage, self.stage_toggles.legend
        self.edit_class, self.new_class_note = self.corrections.edit_class, self.corrections.new_class_note

    def _build_parts(self) -> None:
        viewer, context = self._viewer, self.context
        self.layer_sync = LayerSync(viewer, self.stage_toggles.visible, self._connect_layer)
        self.scheduler = UpdateScheduler(
            self.native, context, lambda: self.params, lambda: self.runner.worker is not None, self._apply_update, self._on_update_error
        )
        self.edits = EditActions(viewer, context, self.layer_sync, self.corrections, self._set_status, self._refresh_controls, self.native)
        self.history = EditHistory(context, self.layer_sync, self.scheduler, lambda: self.params, self.sliders.show, self.edits.after_edit)
        hooks = RunHooks(
            status=self._set_status, progress=self.status_box.show_progress, refresh=self._refresh_controls, live_values=self.sliders.values, watch=self._watch,
            drop=self._drop_session, rerun=self._show_rerun, shown=self._on_shown,
        )  # fmt: skip
        self.runner = Runner(viewer, context, self.inputs, self.layer_sync, self.scheduler, hooks)

    def _context_events(self) -> dict[str, Callable]:
        return {"image": self._on_context_image, "checkpoint": self._on_context_checkpoint}

    def _connect(self) -> None:
        edits, history, buttons = self.edits, self.history, self.corrections.buttons
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.image.changed.connect(self._on_image_changed)
        self.device.changed.connect(lambda value: setattr(self.context, "device", value))
        self.edit_class.changed.connect(lambda *_: edits.show_new_class())
        self.sliders.reset_params_button.changed.connect(self.reset_params)
        for name, action in {
            "merge_button": edits.merge_picked, "split_button": lambda *_: edits.split(), "delete_button": edits.delete_picked,
            "set_class_button": lambda *_: edits.set_class_of_picked(), "next_id_button": edits.next_free_id,
            "draw_line_button": edits.draw_split_line, "undo_button": history.undo, "redo_button": history.redo,
            "clear_picks_button": edits.clear_picks, "reset_centroids_button": history.reset_centroids,
            "accept_button": edits.accept, "discard_button": edits.discard_corrections,
        }.items():  # fmt: skip
            buttons[name].changed.connect(action)
        self._viewer.layers.events.inserted.connect(self.reset_choices)
        self._viewer.layers.events.removed.connect(self._on_layers_removed)
        bind_keys(self._viewer, self._key_actions())
        connect_events(self._context_events(), self.context)
        self.native.destroyed.connect(self._on_destroyed)

    def _start(self) -> None:
        """Show what the context holds (another panel may have chosen an image or a checkpoint), else tell it ours."""
        self.reset_choices()
        context = self.context
        context.device = self.device.value
        if context.image is not None and context.image in self._viewer.layers:
            self._show_image(context.image)
        if context.checkpoint:
            self.set_checkpoint(context.checkpoint)
        if self.checkpoint.value and self.loader.worker is None:
            self._on_checkpoint_changed(self.checkpoint.value)
        self._on_image_changed(self.image.value)
        self._refresh_controls()

    def _key_actions(self) -> dict[str, Callable[[], Any]]:
        return {**self.edits.actions(), **self.history.actions()}

    def _connect_layer(self, layer, stage: str) -> None:
        """Listen to a stage layer put (created, or found: e.g. the Project panel's); connecting twice is harmless."""
        if stage == "instances":
            layer.events.paint.connect(self.edits.on_paint)
            if self.edits.on_instances_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self.edits.on_instances_click)
            bind_keys(layer, self._key_actions())
        elif stage == "centroids":
            layer.events.data.connect(self.history.on_points_changed)

    @property
    def native(self):
        """The scroll area around the controls, so napari docks a widget that scrolls."""
        return self.root_native_widget

    # ------------------------------------------------------------------ the annotator's actions (buttons, keys, scripts)
    run = _forward("runner", Runner.run)
    cancel = _forward("runner", Runner.cancel)
    merge_picked = _forward("edits", EditActions.merge_picked)
    split = _forward("edits", EditActions.split)
    delete_picked = _forward("edits", EditActions.delete_picked)
    set_class_of_picked = _forward("edits", EditActions.set_class_of_picked)
    add_at = _forward("edits", EditActions.add_at)
    next_free_id = _forward("edits", EditActions.next_free_id)
    draw_split_line = _forward("edits", EditActions.draw_split_line)
    accept = _forward("edits", EditActions.accept)
    set_instances = _forward("edits", EditActions.set_instances)
    discard_corrections = _forward("edits", EditActions.discard_corrections)
    pick_at = _forward("edits", EditActions.pick_at)
    clear_picks = _forward("edits", EditActions.clear_picks)
    undo = _forward("history", EditHistory.undo)
    redo = _forward("history", EditHistory.redo)
    move_centroids = _forward("history", EditHistory.move_centroids)
    reset_centroids = _forward("history", EditHistory.reset_centroids)

    # ------------------------------------------------------------------ state
    @property
    def viewer(self):
        """The viewer the panel is docked in."""
        return self._viewer

    @property
    def session(self) -> ImageSession | None:
        """The image being worked on (None before the first run)."""
        return self.context.current

    @property
    def sessions(self) -> dict[str, ImageSession]:
        """The images this viewer holds (image id -> session); an image layer removed frees its session."""
        return self.context.sessions

    def live_values(self) -> dict[str, Any]:
        """The sliders' values by ``Params`` field name."""
        return self.sliders.values()

    @property
    def params(self) -> Params:
        """The current image's (else the checkpoint's) parameters with the sliders' values."""
        current = self.context.current
        base = current.params if current is not None else self.loader.params(str(self.checkpoint.value))
        return base.replace(**self.live_values())

    @property
    def idle(self) -> bool:
        """True when no job runs or waits (tests wait for this)."""
        return self.runner.worker is None and self.scheduler.idle and self.loader.worker is None and not self.layer_sync.busy

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    def _refresh_controls(self) -> None:
        if self._closed:
            return
        self.status_box.show_running(self.runner.worker is not None)
        session = self.context.current
        has = session is not None
        self.corrections.show(has, has and session.history.can_undo, has and session.history.can_redo, session.describe() if has else "–")

    def _edit_class_choices(self) -> list[str]:
        current = self.context.current
        if current is not None:
            return current.edit_classes
        return list(self.loader.model_classes) or [""]

    def reset_choices(self, *args) -> None:
        if not self._closed:
            super().reset_choices(*args)

    # ------------------------------------------------------------------ checkpoint
    def set_checkpoint(self, path: str | Path) -> None:
        """Use the checkpoint file ``path`` (added to the menu and the recent list)."""
        self.inputs.choose_checkpoint(path)

    def _on_checkpoint_changed(self, path: str | None) -> None:
        if not path or self._closed:
            return
        self.context.checkpoint = path
        self.loader.load(path)
        self._set_status(f"reading {Path(path).name} …")

    def _on_context_checkpoint(self, event) -> None:
        """Another panel chose the checkpoint (the project's, a fine-tuned version)."""
        if event.value and not self._closed and event.value != str(self.checkpoint.value or ""):
            self.set_checkpoint(event.value)

    def _on_model_loaded(self, model) -> None:
        known = self.loader.model_classes
        keep = [c for c in self.classes.value if c in known]
        self.inputs.show_classes(keep or layers.image_labels_of(self.image.value, known))
        self.edit_class.reset_choices()
        if self.context.current is None:
            self.sliders.show(model.params)
        self._set_status(describe_model(model))

    def _on_load_error(self, exc: Exception) -> None:
        self.classes.reset_choices()
        self._set_status(f"cannot use this checkpoint: {exc}")
        show_warning(f"napari-irnet: cannot use this checkpoint: {exc}")

    def reset_params(self, *_) -> None:
        """Put the sliders back to the checkpoint's parameters (re-runs what changed)."""
        current = self.context.current
        base = current.result.model.params if current is not None else self.loader.params(str(self.checkpoint.value))
        self.sliders.set_to(base)

    # ------------------------------------------------------------------ images and their sessions
    def _on_image_changed(self, layer) -> None:
        if layer is None or self._closed:
            return
        self.context.image = layer
        labels = layers.image_labels_of(layer, self.loader.model_classes)
        if labels:
            self.classes.value = labels
        info = layer.metadata.get(layers.META_KEY)
        session = self.context.session(info.get("image_id") if isinstance(info, dict) else None)
        if session is not None and session is not self.context.current:
            self._switch_to(session)

    def _on_context_image(self, event) -> None:
        """Another panel chose the image (the Project panel's current image)."""
        self._show_image(event.value)

    def _show_image(self, layer) -> None:
        if layer is None or self._closed or layer is self.image.value:
            return
        self.image.reset_choices()
        self.image.value = layer

    def _switch_to(self, session: ImageSession) -> None:
        self.context.current = session
        self.sliders.show(session.params)
        self.edits.default_edit_class(session)
        self.stage_toggles.show_legend(session.model_classes, session.classes)
        self._refresh_controls()

    def _watch(self, session: ImageSession) -> None:
        """Show every change of a new session's annotation."""
        callback = lambda change, s=session: self._on_annotation_change(s, change)  # noqa: E731
        session.annotation.connect(callback)
        self._listeners[session.image_id] = callback

    def _on_annotation_change(self, session: ImageSession, change) -> None:
        """The annotation changed (edit, re-run, undo, redo): show it."""
        if self._closed:
            return
        if change.labels is not None:
            self.layer_sync.write_labels(session, change.labels)
        self.layer_sync.refresh_features(session)
        self._refresh_controls()

    def _on_layers_removed(self, event=None) -> None:
        """An image layer gone: its session (network outputs, cache) is freed; choices updated."""
        if self._closed:
            return
        self.reset_choices()
        alive = set()
        for layer in self._viewer.layers:
            info = layer.metadata.get(layers.META_KEY) if isinstance(layer.metadata, dict) else None
            if isinstance(layer, Image) and isinstance(info, dict) and info.get("image_id"):
                alive.add(str(info["image_id"]))
        for image_id in [i for i in self.context.sessions if i not in alive]:
            self._drop_session(image_id)

    def _drop_session(self, image_id: str) -> None:
        session = self.context.session(image_id)
        callback = self._listeners.pop(image_id, None)
        if session is not None and callback is not None:
            session.annotation.disconnect(callback)
        was_current = session is not None and session is self.context.current
        self.layer_sync.forget(image_id)
        self.context.drop(image_id)
        if was_current and not self._closed:
            self.scheduler.drop()
            self._refresh_controls()

    def _on_show_changed(self, stage: str, value: bool) -> None:
        if self.context.current is not None:
            self.layer_sync.show_stage(self.context.current, stage, value)

    # ------------------------------------------------------------------ results of runs and re-runs
    def _on_shown(self, session: ImageSession, result: RunResult) -> None:
        """A Run's result is shown: the class menu, the legend, re-runs for sliders moved meanwhile, the instances active."""
        self.loader.model_classes = list(result.model.classes)
        self.edits.default_edit_class(session)
        self.stage_toggles.show_legend(session.model_classes, session.classes)
        self._refresh_controls()
        if self.params != session.params:  # sliders moved while the networks ran: bring the stages up to date
            self.scheduler.request(Request(self.params, session=session))
        self.layer_sync.activate_instances(session)
        self._set_status(f"{session.describe()} on {session.image_name} ({result.device})")

    def _show_rerun(self, session: ImageSession, result: RunResult) -> None:
        before = {"params": session.params}
        session.params = result.cache.params
        self._show_prediction(session, result.prediction, None, "re-run", "update", before, {"params": session.params})

    def _apply_update(self, session: ImageSession, result, request: Request, before: dict, after: dict) -> None:
        self._show_prediction(session, result.prediction, result.recomputed, request.name, request.kind, before, after, request.keep_instances)

    def _show_prediction(self, session, pred, recomputed, name, kind, before, after, keep_instances=False) -> None:
        """Show the stages a re-run recomputed (None: all); the annotation merges new instances with the corrections."""
        stages = set(layers.STAGES) | INSTANCE_STAGES | {"swalk"} if recomputed is None else set(recomputed)
        session.prediction = pred
        if "seeds" in stages:
            self.layer_sync.put_seeds(session)
        if stages & {"swalk", "semantic"}:
            self.layer_sync.put_semantic(session)
        if session.take_points(pred, stages, before, after):
            self.layer_sync.put_centroids(session)
        if stages & INSTANCE_STAGES and not keep_instances:
            if session.state == "accepted" and not self._accepted_notice_given:
                show_info("napari-irnet: this image is accepted; its instances stay as they are (undo the acceptance or discard corrections to change them)")
                self._accepted_notice_given = True
            record = session.take_proposal(pred, name, kind, before, after)
            if record is not None and kind == "edit":
                self.edits.after_edit(session)
            if record is not None and session is self.context.current:
                self._set_status(f"updated: {session.describe()}")
        self._refresh_controls()

    def _on_update_error(self, exc: Exception) -> None:
        self._set_status(f"update failed: {exc}")
        show_error(f"napari-irnet: update failed: {exc}")

    # ------------------------------------------------------------------ closing
    def _on_destroyed(self, *_) -> None:
        """The panel is gone (viewer closed): stop listening to workers, keys, layers and the context."""
        self._closed = True
        for part in (self.runner, self.scheduler, self.loader, self.layer_sync):
            part.close()
        self.edits.closed = self.history.closed = True
        unbind_keys(self._viewer)
        for emitter, callback in ((self._viewer.layers.events.inserted, self.reset_choices),
                                  (self._viewer.layers.events.removed, self._on_layers_removed)):  # fmt: skip
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001 - nothing may escape a Qt destructor callback
                pass
        connect_events(self._context_events(), self.context, connect=False)
        for image_id in list(self._listeners):  # its sessions go with it (network outputs, caches): a new panel starts afresh
            self._drop_session(image_id)


__all__ = ["PANEL_WIDTH", "IRNetWidget"]
