"""The napari dock widget: run IRNet on an image, tune it live, correct the result.

Plugins ▸ napari-irnet ▸ IRNet. The widget holds no algorithm: the networks
and stages run in :mod:`napari_irnet._napari.jobs` (background workers); the
corrections, their rules and their undo are the image's
:class:`~napari_irnet.core.annotation.AnnotationSession` (the buttons and
keys are :mod:`napari_irnet._napari.edit_actions`); its corrections go to the
image's one store (:func:`napari_irnet._napari.context.store_for_layer`: the
project for a project image, else its own folder); the layers are
:mod:`napari_irnet._napari.layers`.

Layers of one image are found by their metadata marker, so renaming one is
harmless and a deleted one comes back at the next update. After a run and
after every edit the ``instances`` layer is the active one. Closing the
viewer while a job runs is safe: the panel stops listening to its workers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Select,
    Slider,
    create_widget,
)
from napari.layers import Image
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from ..core.annotation import AnnotationSession
from ..core.corrections import image_fingerprint
from ..core.edits import features_table, table_from_records
from ..core.inference import describe_device, device_choices
from ..core.io import InputError, OutputError
from ..core.params import Params
from ..core.progress import Step
from ..core.project import ProjectError
from . import layers as _layers
from .context import ImageSession, find_layer, put_layer, stage_layers, store_for_layer
from .edit_actions import SHORTCUTS, EditActions
from .jobs import RUN_STEPS, RunResult, UpdateResult, load_model, run_job, update_job
from .layers import STAGES, VISIBLE_STAGES
from .recent import checkpoint_choices, remember_checkpoint
from .workers import start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..core.checkpoint import Model

#: the live parameters: Params field -> (widget class, min, max, step, label)
LIVE_PARAMS: dict[str, tuple[type, float, float, float, str]] = {
    "seed_fg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "seed fg"),
    "seed_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "seed bg"),
    "beta": (FloatSlider, 1.0, 30.0, 0.5, "β"),
    "walk_steps": (Slider, 0, 1024, 16, "walk steps"),
    "cluster_threshold": (FloatSlider, 0.1, 10.0, 0.1, "cluster thr."),
    "instance_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "instance bg"),
    "semantic_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "semantic bg"),
    "min_fragment_fraction": (FloatSpinBox, 0.0, 0.05, 0.0005, "min fragment"),
}
#: ms of quiet after the last slider change before the stages re-run
DEBOUNCE_MS = 25
#: the widest a docked panel may be (pixels)
PANEL_WIDTH = 420
#: cache stages -> the layers they feed
_INSTANCE_STAGES = {"centroids", "clusters", "iwalk", "instances"}
_SHORTCUTS = SHORTCUTS
#: how the shortcuts are written on the buttons
_KEY_TEXT = {"Shift-": "⇧", "Control-": "Ctrl+"}


def _load_predicting_model(path: str) -> Model:
    """The checkpoint at ``path``, refused (CheckpointError) when it lacks a trained network prediction needs."""
    model = load_model(path)
    model.require("cam", "irn")
    return model


@dataclass
class _Request:
    """One asked-for re-run of the cheap stages (requests waiting are merged)."""

    params: Params
    centre_points: np.ndarray | None = None
    reset_points: bool = False
    name: str = "parameters"
    kind: str = "update"  # "update" (parameters) or "edit" (centroids)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    keep_instances: bool = False
    session: ImageSession | None = None
    cache: Any = None  # the StageCache it ran on
    applied: bool = False  # its instances are shown already (only the semantic map is to come)

    def then(self, later: _Request) -> _Request:
        """One request doing ``self`` and then ``later`` (snapshots: oldest before, newest after)."""
        edit = self.kind == "edit" or later.kind == "edit"
        if later.centre_points is not None or later.reset_points:
            pts, reset = later.centre_points, later.reset_points
        else:
            pts, reset = self.centre_points, self.reset_points
        if later.kind == "edit":
            name = later.name
        elif self.kind == "edit":
            name = self.name
        else:
            name = later.name
        return _Request(
            params=later.params,
            centre_points=pts,
            reset_points=reset,
            name=name,
            kind="edit" if edit else "update",
            before={**later.before, **self.before},
            after={**self.after, **later.after},
            keep_instances=self.keep_instances and later.keep_instances,
            session=later.session or self.session,
        )


class IRNetWidget(EditActions, Container):
    """Dock widget: image, checkpoint, classes, device, Run; live parameters; stages; corrections."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True, labels=False)
        self._viewer = napari_viewer
        self._sessions: dict[str, ImageSession] = {}
        self._current: ImageSession | None = None
        self._run_worker = None
        self._run_progress = None
        self._run_image = None  # (layer, image id, image) of the run in progress
        self._update_worker = None
        self._running_request: _Request | None = None
        self._pending: _Request | None = None
        self._generation = 0
        self._load_worker = None
        self._load_path: str | None = None
        self._loaded_params: dict[str, Params] = {}
        self._model_classes: list[str] = []
        self._applying = False  # our own writes into layers: ignore their events
        self._paint_check_queued = False
        self._accepted_notice_given = False
        self._closed = False  # the Qt widgets are gone (viewer closed): workers' late results are dropped

        self.extend([*self._build_input(), *self._build_params(), *self._build_stages(), *self._build_corrections()])
        scroll = self.root_native_widget
        if hasattr(scroll, "widget") and scroll.widget() is not None:  # wide enough for the controls, never wider than the dock
            scroll.setMinimumWidth(min(scroll.widget().minimumSizeHint().width() + 24, PANEL_WIDTH))

        self._debounce = QTimer(self.native)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_debounce)
        self._connect_controls()

        layers_events = self._viewer.layers.events
        layers_events.inserted.connect(self.reset_choices)
        layers_events.removed.connect(self._on_layers_removed)
        self._bind_keys(self._viewer)
        self.native.destroyed.connect(self._on_destroyed)
        self.reset_choices()
        if self.checkpoint.value:
            self._on_checkpoint_changed(self.checkpoint.value)
        self._on_image_changed(self.image.value)
        self._refresh_controls()

    # ------------------------------------------------------------------ building
    def _build_input(self) -> list:
        self.image = create_widget(annotation=Image, label="image", name="image")
        self.checkpoint = ComboBox(label="checkpoint", name="checkpoint", choices=self._checkpoint_choices)
        self.browse = PushButton(text="Browse…", name="browse", tooltip="Choose a checkpoint file (.pt, .pth)")
        self.classes = Select(label="classes", name="classes", choices=self._class_choices)
        self.classes.tooltip = "The classes present in this image (image-level labels); none chosen: the classifier decides"
        self.classes.native.setMaximumHeight(72)
        self.intensity = ComboBox(label="intensity", name="intensity", choices=list(_layers.INTENSITY_MODES.items()), value="contrast")
        self.intensity.tooltip = (
            "How the image's values become the networks' 8-bit input: as the layer shows them (its contrast limits), "
            "or stretched between percentiles or minimum and maximum"
        )
        self.channels = LineEdit(label="channels", name="channels", value="")
        self.channels.tooltip = "For a (channels, H, W) image: one channel (gray) or three (red green blue), e.g. '0' or '0 2 1'"
        self.device = ComboBox(label="device", name="device", choices=device_choices(), value="auto")
        self.device_in_use = Label(label="in use", name="device_in_use", value=describe_device("auto"))
        self.run_button = PushButton(text="Run", name="run_button", tooltip="Run both networks once, then every stage")
        self.cancel_button = PushButton(text="Cancel", name="cancel_button", enabled=False)
        self.status = Label(label="status", name="status", value="choose an image and a checkpoint, then Run")
        self.status.native.setWordWrap(True)
        ckpt_row = Container(widgets=[self.checkpoint, self.browse], layout="horizontal", labels=False, label="checkpoint")
        input_box = Container(
            widgets=[self.image, ckpt_row, self.classes, self.intensity, self.channels, self.device, self.device_in_use, self.status],
            name="input_box",
        )
        run_row = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        return [Label(value="<b>Input</b>"), input_box, run_row]

    def _build_params(self) -> list:
        self.param_widgets: dict[str, Any] = {}
        defaults = Params()
        for name, (cls, lo, hi, step, label) in LIVE_PARAMS.items():
            w = cls(name=name, label=label, min=lo, max=hi, step=step, value=getattr(defaults, name))
            w.tooltip = f"Params.{name}" + (" (fraction of the image area)" if name == "min_fragment_fraction" else "")
            w.changed.connect(self._on_param_changed)
            self.param_widgets[name] = w
        self.reset_params_button = PushButton(text="Reset to the checkpoint's values", name="reset_params_button")
        params_box = Container(widgets=list(self.param_widgets.values()), name="parameters")
        return [Label(value="<b>Live parameters</b>"), params_box, self.reset_params_button]

    def _build_stages(self) -> list:
        self.show_stage: dict[str, CheckBox] = {}
        for stage in STAGES:
            cb = CheckBox(text=stage, name=f"show_{stage}", value=stage in VISIBLE_STAGES)
            cb.changed.connect(lambda value, s=stage: self._on_show_changed(s, value))
            self.show_stage[stage] = cb
        stages = list(self.show_stage.values())
        rows = [Container(widgets=stages[i : i + 3], layout="horizontal", labels=False) for i in range(0, len(stages), 3)]
        self.legend = Label(name="legend", value="")
        self.legend.native.setWordWrap(True)
        self.legend.tooltip = "Instances, seeds and semantic in their class's colour (instances in shades of it); outlines: edited, accepted"
        return [Label(value="<b>Stages shown</b>"), *rows, self.legend]

    def _button(self, name: str, text: str, key: str | None, tip: str) -> PushButton:
        keys = _SHORTCUTS[key] if key else ""
        for long, short in _KEY_TEXT.items():
            keys = keys.replace(long, short)
        label = f"{text}  {keys}" if key else text
        return PushButton(text=label, name=name, tooltip=tip + (f" (shortcut {_SHORTCUTS[key]})" if key else ""))

    def _build_corrections(self) -> list:
        b = self._button
        self.edit_class = ComboBox(label="class", name="edit_class", choices=self._edit_class_choices)
        self.edit_class.tooltip = "Class for Set class, for painted instances and for Shift+click (click to add)"
        self.new_class_note = Label(label="new", name="new_class_note", value="–")
        self.new_class_note.tooltip = "The class a painted or added instance gets"
        self.picked = Label(label="picked", name="picked", value="–")
        self.picked.tooltip = "Click instances to pick them (the instances layer in pan/zoom mode); Shift+click on background adds one"
        self.image_state = Label(label="image", name="image_state", value="–")
        self.image_state.native.setWordWrap(True)
        self.merge_button = b("merge_button", "Merge", "merge", "Merge the picked instances into the first one picked")
        self.split_button = b("split_button", "Split", "split", "Split along the path drawn in 'split line', or between two picks in one instance")
        self.delete_button = b("delete_button", "Delete", "delete", "Delete the picked instances (or the selected label); their pixels stay background")
        self.set_class_button = b("set_class_button", "Set class", "set_class", "Give the picked instances the class chosen above")
        self.next_id_button = b("next_id_button", "New id", "next_id", "Select the next free id in 'instances' and start painting")
        self.draw_line_button = b("draw_line_button", "Split line", None, "Draw a path across one instance in the 'split line' layer, then Split")
        self.clear_picks_button = b("clear_picks_button", "Clear picks", "clear_picks", "Forget the picked instances")
        self.accept_button = b("accept_button", "Accept", "accept", "Mark every instance and the image as done; saved with the image")
        self.undo_button = b("undo_button", "Undo", "undo", "Undo the last edit, brush stroke or parameter change")
        self.redo_button = b("redo_button", "Redo", "redo", "Redo")
        self.reset_centroids_button = b("reset_centroids_button", "Centroids from field", None, "Forget edited centroids: clusters come from the displacement field again")
        self.discard_button = b("discard_button", "Discard…", None, "Replace every instance with the model's proposal (asks first; undoable)")

        def row(*widgets) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        edit_box = Container(widgets=[self.edit_class, self.new_class_note, self.picked, self.image_state], name="edit_box")
        return [
            Label(value="<b>Corrections</b>"),
            edit_box,
            row(self.merge_button, self.split_button),
            row(self.delete_button, self.set_class_button),
            row(self.next_id_button, self.draw_line_button),
            row(self.undo_button, self.redo_button),
            row(self.clear_picks_button, self.reset_centroids_button),
            row(self.accept_button, self.discard_button),
        ]

    def _connect_controls(self) -> None:
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.browse.changed.connect(self._browse_checkpoint)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.device.changed.connect(lambda v: setattr(self.device_in_use, "value", describe_device(v)))
        self.image.changed.connect(self._on_image_changed)
        self.edit_class.changed.connect(lambda *_: self._show_new_class())
        self.reset_params_button.changed.connect(self.reset_params)
        self.merge_button.changed.connect(self.merge_picked)
        self.split_button.changed.connect(lambda *_: self.split())
        self.delete_button.changed.connect(self.delete_picked)
        self.set_class_button.changed.connect(lambda *_: self.set_class_of_picked())
        self.next_id_button.changed.connect(self.next_free_id)
        self.draw_line_button.changed.connect(self.draw_split_line)
        self.clear_picks_button.changed.connect(self.clear_picks)
        self.undo_button.changed.connect(self.undo)
        self.redo_button.changed.connect(self.redo)
        self.accept_button.changed.connect(self.accept)
        self.reset_centroids_button.changed.connect(self.reset_centroids)
        self.discard_button.changed.connect(self.discard_corrections)

    @property
    def native(self):
        """The scroll area around the controls, so napari docks a widget that scrolls."""
        return self.root_native_widget

    # ------------------------------------------------------------------ closing
    def _on_destroyed(self, *_) -> None:
        """The panel is gone (viewer closed): stop listening to workers, keys and layers."""
        self._closed = True
        for worker in (self._run_worker, self._update_worker, self._load_worker):
            if worker is not None:
                try:
                    worker.quit()
                except RuntimeError:  # its Qt side is gone already
                    pass
        self._pending = None
        self._unbind_keys(self._viewer)
        for emitter, callback in ((self._viewer.layers.events.inserted, self.reset_choices),
                                  (self._viewer.layers.events.removed, self._on_layers_removed)):  # fmt: skip
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001 - nothing may escape a Qt destructor callback
                pass
        for session in self._sessions.values():
            session.annotation._listeners.clear()

    def reset_choices(self, *args) -> None:
        if not self._closed:
            super().reset_choices(*args)

    # ------------------------------------------------------------------ small helpers
    def _checkpoint_choices(self, *_) -> list[tuple[str, str]]:
        choices = checkpoint_choices()
        current = getattr(self, "_extra_checkpoint", None)
        if current and current not in [c[1] for c in choices]:
            choices.insert(0, (Path(current).name, current))
        return choices

    def _class_choices(self, *_) -> list[str]:
        return list(getattr(self, "_model_classes", []) or [])

    def _edit_class_choices(self, *_) -> list[str]:
        cur = getattr(self, "_current", None)
        if cur is not None:
            return cur.edit_classes
        return list(getattr(self, "_model_classes", []) or []) or [""]

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    @property
    def session(self) -> ImageSession | None:
        """The image being worked on (None before the first run)."""
        return self._current

    def live_values(self) -> dict[str, Any]:
        """The sliders' values by ``Params`` field name."""
        live = {name: w.value for name, w in self.param_widgets.items()}
        live["walk_steps"] = int(live["walk_steps"])
        return live

    @property
    def params(self) -> Params:
        """The current image's (else the checkpoint's) parameters with the sliders' values."""
        base = self._current.params if self._current is not None else self._checkpoint_params()
        return base.replace(**self.live_values())

    def _checkpoint_params(self) -> Params:
        """Parameters of the chosen checkpoint once it has been read (never blocks)."""
        return self._loaded_params.get(str(self.checkpoint.value), Params())

    @property
    def idle(self) -> bool:
        """True when no job runs or waits (tests wait for this)."""
        return (
            self._run_worker is None
            and self._update_worker is None
            and self._pending is None
            and self._load_worker is None
            and (self._closed or not self._debounce.isActive())
        )

    def _image_id(self, layer) -> str:
        meta = layer.metadata
        info = meta.get("napari_irnet") if isinstance(meta.get("napari_irnet"), dict) else None
        if info is not None and info.get("image_id"):
            return str(info["image_id"])
        new_id = uuid.uuid4().hex[:8]
        meta = dict(meta)
        meta["napari_irnet"] = {**(info or {}), "image_id": new_id}
        layer.metadata = meta
        return new_id

    def _new_class(self) -> str:
        """The class a painted or added instance gets: the menu's, else the image's first."""
        if self.edit_class.value:
            return str(self.edit_class.value)
        return self._current.annotation.default_class if self._current is not None else ""

    def _show_new_class(self) -> None:
        if self._closed:
            return
        cls = self._new_class()
        if self._current is not None and cls:
            self._current.annotation.default_class = cls
        self.new_class_note.value = f"painted and added instances: {cls}" if cls else "–"

    def _default_edit_class(self, session: ImageSession) -> None:
        """The class menu starts on the image's first class (never one the image does not have)."""
        self.edit_class.reset_choices()
        if self.edit_class.value not in session.classes and session.classes:
            self.edit_class.value = session.classes[0]
        self._show_new_class()

    # ------------------------------------------------------------------ checkpoint, classes, image
    def set_checkpoint(self, path: str | Path) -> None:
        """Use the checkpoint file ``path`` (added to the menu and the recent list)."""
        path = str(Path(path).expanduser())
        self._extra_checkpoint = path
        self.checkpoint.reset_choices()
        self.checkpoint.value = path

    def _browse_checkpoint(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        start = str(Path(self.checkpoint.value).parent) if self.checkpoint.value else ""
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Choose a napari-irnet checkpoint", start, "Checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.set_checkpoint(path)

    def _on_checkpoint_changed(self, path: str | None) -> None:
        if not path or self._closed:
            return
        worker = start_worker(
            _load_predicting_model,
            path,
            _connect={
                "returned": lambda model, p=path: self._on_model_loaded(model, p),
                "errored": lambda exc, p=path: self._on_load_error(exc, p),
                "finished": lambda p=path: self._on_load_finished(p),
            },
        )
        self._load_worker = worker
        self._load_path = path
        self._set_status(f"reading {Path(path).name} …")

    def _on_load_finished(self, path: str) -> None:
        if self._load_path == path:
            self._load_worker = None

    def _on_model_loaded(self, model, path: str | None = None) -> None:
        if self._closed or (path is not None and path != self.checkpoint.value):
            return  # the panel is gone, or an older choice finished loading late
        self._model_classes = list(model.classes)
        self._loaded_params[str(path or self.checkpoint.value)] = model.params
        keep = [c for c in self.classes.value if c in self._model_classes]
        self.classes.reset_choices()
        self.classes.value = keep or self._image_labels_for(self.image.value)
        self.edit_class.reset_choices()
        if self._current is None:
            self._set_params_widgets(model.params)
        self._set_status(f"checkpoint: {len(model.classes)} classes, backbone {model.backbone}; press Run")

    def _on_load_error(self, exc: Exception, path: str | None = None) -> None:
        if self._closed or (path is not None and path != self.checkpoint.value):
            return
        self._model_classes = []
        self.classes.reset_choices()
        self._set_status(f"cannot use this checkpoint: {exc}")
        show_warning(f"napari-irnet: cannot use this checkpoint: {exc}")

    def _image_labels_for(self, layer) -> list[str]:
        """Image-level labels carried by the image layer (e.g. the sample), if the model knows them."""
        if layer is None:
            return []
        info = layer.metadata.get("napari_irnet")
        labels = list(info.get("labels", [])) if isinstance(info, dict) else []
        return [c for c in labels if c in self._model_classes]

    def _on_image_changed(self, layer) -> None:
        if layer is None or self._closed:
            return
        labels = self._image_labels_for(layer)
        if labels:
            self.classes.value = labels
        info = layer.metadata.get("napari_irnet")
        image_id = info.get("image_id") if isinstance(info, dict) else None
        if image_id and image_id in self._sessions and self._sessions[image_id] is not self._current:
            self._switch_to(self._sessions[image_id])

    def _switch_to(self, session: ImageSession) -> None:
        self._current = session
        self._set_params_widgets(session.params)
        self._default_edit_class(session)
        self._show_legend(session)
        self._refresh_controls()

    def _on_layers_removed(self, event=None) -> None:
        """An image layer gone: its session (network outputs, cache) is freed; choices updated."""
        if self._closed:
            return
        self.reset_choices()
        alive = set()
        for layer in self._viewer.layers:
            info = layer.metadata.get("napari_irnet") if isinstance(layer.metadata, dict) else None
            if isinstance(layer, Image) and isinstance(info, dict) and info.get("image_id"):
                alive.add(str(info["image_id"]))
        for image_id in [i for i in self._sessions if i not in alive]:
            self._drop_session(image_id)

    def _drop_session(self, image_id: str) -> None:
        session = self._sessions.pop(image_id)
        session.annotation._listeners.clear()
        if self._current is session:
            self._current = None
            self._drop_pending_updates()
            self._refresh_controls()

    @property
    def sessions(self) -> dict[str, ImageSession]:
        """The images this panel holds (image id -> session); an image layer removed frees its session."""
        return dict(self._sessions)

    def _set_params_widgets(self, params: Params) -> None:
        for name, w in self.param_widgets.items():
            with w.changed.blocked():
                w.value = getattr(params, name)

    def reset_params(self, *_) -> None:
        """Put the sliders back to the checkpoint's parameters (re-runs what changed)."""
        if self._current is not None:
            base = self._current.result.model.params
        else:
            base = self._checkpoint_params()
        for name, w in self.param_widgets.items():
            w.value = getattr(base, name)

    # ------------------------------------------------------------------ run
    def _network_input(self, layer) -> np.ndarray:
        """The layer's pixels as the networks take them (intensity and channels as chosen in the panel)."""
        channels = _layers.parse_channels(self.channels.value)
        return _layers.layer_to_rgb8(layer, self.intensity.value, channels)

    def run(self, *_) -> None:
        """Run the networks on the chosen image in a background worker."""
        if self._run_worker is not None:
            show_info("napari-irnet: a run is already in progress")
            return
        layer = self.image.value
        if layer is None:
            show_warning("napari-irnet: choose an image layer first")
            return
        if not self.checkpoint.value:
            show_warning("napari-irnet: choose a checkpoint first (Browse…)")
            return
        try:
            image = self._network_input(layer)
        except ValueError as exc:
            show_error(f"napari-irnet: {layer.name}: {exc}")
            return
        image_id = self._image_id(layer)
        classes = list(self.classes.value) or self._image_labels_for(layer)
        session = self._sessions.get(image_id)
        points = session.points if session is not None and session.points_edited else None
        self._run_image = (layer, image_id, image)
        self._generation += 1  # results of older updates no longer apply
        self._pending = None
        self._run_progress = progress(total=RUN_STEPS, desc="napari-irnet")
        worker = start_worker(
            run_job,
            self.checkpoint.value,
            image,
            classes,
            None,  # the checkpoint's parameters ...
            self.device.value,
            points,
            self.live_values(),  # ... with the sliders' values
            _connect={
                "yielded": self._on_run_step,
                "returned": self._on_run_returned,
                "errored": self._on_run_error,
                "aborted": lambda: self._set_status("run cancelled"),
                "finished": [self._on_run_finished, self._run_progress.close],
            },
        )
        self._run_worker = worker
        self._refresh_controls()
        self._set_status("starting …")

    def _on_run_step(self, item) -> None:
        """A step of the run: its description, or a post-processing :class:`Step` (stage, walk step)."""
        bar = self._run_progress
        if bar is None:
            return
        # the status first: drawing the bar may process events (a later error's status must win)
        if isinstance(item, Step):
            if item.total:  # a walk: the bar follows its steps
                if item.done == item.total or item.done % 32 == 0:
                    self._set_status(f"{item.stage}: step {item.done} of {item.total}")
                if bar.total != item.total:
                    bar.total = item.total
                bar.n = item.done
                bar.set_description(f"napari-irnet: {item.stage}")
                bar.refresh()
            else:
                self._set_status(f"post-processing: {item.stage} done")
            return
        self._set_status(item)
        if bar.n < RUN_STEPS:
            bar.update(1)

    def cancel(self, *_) -> None:
        """Stop the run at its next step."""
        if self._run_worker is not None:
            self._run_worker.quit()
            self._set_status("cancelling …")

    def _on_run_error(self, exc: Exception) -> None:
        if self._closed:
            return
        self._set_status(f"run failed: {exc}")
        show_error(f"napari-irnet: run failed: {exc}")

    def _on_run_finished(self) -> None:
        self._run_worker = None
        self._run_image = None
        if self._closed:
            return
        self._refresh_controls()
        if self._pending is not None and self._update_worker is None:
            self._start_update()

    def _on_run_returned(self, result: RunResult) -> None:
        if self._closed or self._run_image is None:
            return
        layer, image_id, image = self._run_image
        if layer not in self._viewer.layers:
            return  # the image was closed while its networks ran
        self.device_in_use.value = result.device
        remember_checkpoint(result.checkpoint)
        self.checkpoint.reset_choices()
        self._model_classes = list(result.model.classes)
        session = self._sessions.get(image_id)
        if session is not None and session.image.shape != image.shape:
            self._drop_session(image_id)
            session = None
        if session is None:
            self._start_session(layer, image_id, image, result)
        else:
            self._rerun_session(session, result)
        self._default_edit_class(self._current)
        # sliders moved while the networks ran: bring the stages up to date
        if self.params != self._current.params:
            self._request(_Request(self.params, session=self._current))
        self._activate_instances(self._current)
        self._set_status(f"{self._describe(self._current)} on {self._current.image_name} ({result.device})")

    def _start_session(self, layer, image_id: str, image: np.ndarray, result: RunResult) -> None:
        pred = result.prediction
        annotation = AnnotationSession.from_prediction(pred, result.model.classes, result.classes)
        fingerprint = image_fingerprint(np.asarray(layer.data))
        try:
            store = store_for_layer(layer, image, fingerprint)
        except ProjectError as exc:
            show_error(f"napari-irnet: {exc}")
            return
        session = ImageSession(
            image_id=image_id, image_name=layer.name, image=image, store=store, result=result, annotation=annotation,
            params=result.cache.params, points=np.asarray(pred.centre_points, dtype=np.float64), prediction=pred,
            fingerprint=fingerprint,
        )  # fmt: skip
        self._restore_stored(session)
        annotation.connect(lambda change, s=session: self._on_annotation_change(s, change))
        self._sessions[image_id] = session
        self._current = session
        self._store_proposal(session)
        self._show_all_stages(session)

    def _restore_stored(self, session: ImageSession) -> None:
        """Start from the corrections stored for this image (they win over the proposal)."""
        try:
            stored = session.store.load()
        except (InputError, ProjectError, OSError, ValueError) as exc:
            show_warning(f"napari-irnet: stored corrections not used: {exc}")
            return
        if stored is None:
            return
        try:
            session.annotation.restore(stored)
        except ValueError as exc:
            show_warning(f"napari-irnet: stored corrections not used: {exc}")
            return
        show_info(f"napari-irnet: loaded the corrections of {session.image_name} ({stored.state}{', saved ' + stored.updated if stored.updated else ''})")

    def _store_proposal(self, session: ImageSession) -> None:
        """In a project, a Run's proposal is stored as the image's result (the store decides; a folder keeps none)."""
        pred = session.prediction
        corr = AnnotationSession.from_prediction(pred, session.model_classes, session.classes).to_corrections()
        try:
            session.store.save_proposal(corr, pred.semantic, session.model_classes, session.result.checkpoint, session.params, session.classes)
        except (OutputError, ProjectError, OSError, ValueError) as exc:
            show_warning(f"napari-irnet: the proposal is not stored: {exc}")

    def _rerun_session(self, session: ImageSession, result: RunResult) -> None:
        session.result = result
        before = {"params": session.params}
        session.params = result.cache.params
        self._apply_prediction(session, result.prediction, None, "re-run", "update", before, {"params": session.params})
        self._store_proposal(session)
        self._put_static_stages(session)
        self._current = session

    # ------------------------------------------------------------------ layers
    def _put(self, tup, stage: str, session: ImageSession | None = None):
        if session is not None:
            tup[1]["metadata"][_layers.META_KEY]["image_name"] = session.image_name
        self._applying = True
        try:
            layer, created = put_layer(self._viewer, tup, visible=self.show_stage[stage].value if stage in self.show_stage else None)
        finally:
            self._applying = False
        self._connect_layer(layer, stage)  # also a layer found there (e.g. the Project panel's): connecting is idempotent
        return layer

    def _connect_layer(self, layer, stage: str) -> None:
        if stage == "instances":
            layer.events.paint.connect(self._on_paint)
            if self._on_instances_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._on_instances_click)
            self._bind_keys(layer)
        elif stage == "centroids":
            layer.events.data.connect(self._on_points_changed)
        elif stage == "corrections" and layer.contour != _layers.OUTLINE_WIDTH:
            layer.contour = _layers.OUTLINE_WIDTH
            layer.editable = False

    def _put_static_stages(self, session: ImageSession) -> None:
        """CAM, boundary and displacement: they change only with a run."""
        out, classes, sid = session.result.outputs, session.model_classes, session.image_id
        for tup in _layers.cam_layers(sid, out, classes):
            self._put(tup, "CAM", session)
        self._put(_layers.boundary_layer(sid, out), "boundary", session)
        self._put(_layers.displacement_layer(sid, out), "displacement", session)

    def _show_all_stages(self, session: ImageSession) -> None:
        sid, pred = session.image_id, session.prediction
        self._put_static_stages(session)
        self._put(_layers.seeds_layer(sid, pred.seeds, session.model_classes), "seeds", session)
        self._put(_layers.semantic_layer(sid, pred.semantic, session.model_classes), "semantic", session)
        self._put_instances(session)
        self._put(_layers.centroids_layer(sid, session.points, session.labels, session.table), "centroids", session)
        self._show_legend(session)
        self._refresh_controls()

    def _show_legend(self, session: ImageSession) -> None:
        self.legend.value = _layers.legend_html(session.model_classes, session.classes)

    def _instances_layer(self, session: ImageSession | None = None):
        """The instances layer of the current image, re-created if it was deleted."""
        session = session or self._current
        if session is None:
            return None
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is None:
            layer = self._put_instances(session)
        return layer

    def _activate_instances(self, session: ImageSession) -> None:
        """Make the instances layer the active one, in pan/zoom mode unless it is painting (first click picks)."""
        layer = self._instances_layer(session)
        if layer is None:
            return
        self._viewer.layers.selection.active = layer
        if layer.mode not in ("paint", "fill", "erase", "pan_zoom"):
            layer.mode = "pan_zoom"

    def _put_instances(self, session: ImageSession):
        tup = _layers.instances_layer(session.image_id, session.labels.copy(), session.table, session.model_classes)
        layer = self._put(tup, "instances", session)
        self._put(_layers.corrections_layer(session.image_id, session.labels, session.table), "corrections", session)
        return layer

    def _refresh_features(self, session: ImageSession) -> None:
        """Features, colours and outlines of the instances, and the centroids' text, after a change."""
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is not None:
            feats = features_table(session.labels, session.table, session.annotation.default_class)
            layer.features = feats
            layer.colormap = _layers.instances_colormap(session.table, session.model_classes, feats["index"][1:])
        self._put(_layers.corrections_layer(session.image_id, session.labels, session.table), "corrections", session)
        pts = find_layer(self._viewer.layers, session.image_id, "centroids")
        if pts is not None and len(pts.data) == len(session.points):
            pts.features = _layers.centroid_features(session.points, session.labels, session.table)

    def _on_show_changed(self, stage: str, value: bool) -> None:
        if self._current is None:
            return
        for layer in stage_layers(self._viewer.layers, self._current.image_id, stage):
            layer.visible = bool(value)

    # ------------------------------------------------------------------ live updates ("latest wins")
    def _on_param_changed(self, *_) -> None:
        if self._current is None or self._closed:
            return
        self._debounce.start()

    def _on_debounce(self) -> None:
        """The sliders have been still for DEBOUNCE_MS: re-run what their change touches."""
        session = self._current
        if session is None or self._closed:
            return
        target = session.params
        if self._running_request is not None:
            target = self._running_request.params
        if self._pending is not None:
            target = self._pending.params
        params = self.params
        if params != target:
            self._request(_Request(params, session=session))

    def _request(self, request: _Request) -> None:
        """Queue a re-run of the cheap stages; a running one that is now stale stops early."""
        request.session = request.session or self._current
        running = self._running_request
        if running is not None and self._update_worker is not None:
            if not running.applied:
                # the running request's result will be dropped: fold it into this one
                request = running.then(request)
            self._running_request = None
        self._pending = request if self._pending is None else self._pending.then(request)
        self._start_update()

    def _drop_pending_updates(self) -> None:
        """Forget re-runs waiting or running (their results no longer apply)."""
        self._generation += 1
        self._pending = None
        self._running_request = None
        if not self._closed:
            self._debounce.stop()

    def _start_update(self) -> None:
        """Start the waiting request unless a job runs (it starts when that one finishes)."""
        if self._closed or self._pending is None or self._update_worker is not None or self._run_worker is not None:
            return
        request, self._pending = self._pending, None
        session = request.session or self._current
        if session is None or session.image_id not in self._sessions:
            return
        request.params = self.params if session is self._current else request.params
        request.session = session
        request.cache = session.result.cache
        self._running_request = request
        self._generation += 1
        self._update_worker = start_worker(
            update_job,
            session.result.cache,
            request.params,
            request.centre_points,
            request.reset_points,
            self._generation,
            self._is_current,
            _connect={
                "yielded": self._on_update_result,
                "returned": self._on_update_result,
                "errored": self._on_update_error,
                "finished": self._on_update_finished,
            },
        )

    def _is_current(self, generation: int) -> bool:
        """Polled by the worker between stages: False once a newer request waits (or the panel is gone)."""
        return not self._closed and generation == self._generation and self._pending is None

    def _on_update_result(self, result: UpdateResult | None) -> None:
        """Instances first (yielded), then the semantic map (returned)."""
        request = self._running_request
        if self._closed or result is None or request is None or result.generation != self._generation:
            return
        if result.final:
            self._running_request = None
        session = request.session
        if session is None or session.result.cache is not request.cache or session.image_id not in self._sessions:
            return  # a new run replaced the cache meanwhile, or the image is gone
        before = {"params": session.params, **request.before}
        session.params = result.params
        after = {**request.after, "params": result.params}
        if result.recomputed:
            self._apply_prediction(session, result.prediction, result.recomputed, request.name, request.kind, before, after, keep_instances=request.keep_instances)
        request.applied = True

    def _on_update_error(self, exc: Exception) -> None:
        self._running_request = None
        if self._closed:
            return
        self._set_status(f"update failed: {exc}")
        show_error(f"napari-irnet: update failed: {exc}")

    def _on_update_finished(self) -> None:
        self._update_worker = None
        self._running_request = None
        self._start_update()

    def _apply_prediction(
        self,
        session: ImageSession,
        pred,
        recomputed: list[str] | None,
        name: str,
        kind: str,
        before: dict[str, Any],
        after: dict[str, Any],
        keep_instances: bool = False,
    ) -> None:
        """Show the stages a re-run recomputed; the annotation merges new instances with the corrections."""
        stages = set(STAGES) | _INSTANCE_STAGES | {"swalk"} if recomputed is None else set(recomputed)
        sid = session.image_id
        session.prediction = pred
        if "seeds" in stages:
            self._put(_layers.seeds_layer(sid, pred.seeds, session.model_classes), "seeds", session)
        if stages & {"swalk", "semantic"}:
            self._put(_layers.semantic_layer(sid, pred.semantic, session.model_classes), "semantic", session)
        if {"centroids", "clusters"} & stages and not session.points_edited:
            before.setdefault("points", (session.points, False))
            session.points = np.asarray(pred.centre_points, dtype=np.float64)
            after["points"] = (session.points, False)
            self._put(_layers.centroids_layer(sid, session.points, session.labels, session.table), "centroids", session)
        if stages & _INSTANCE_STAGES and not keep_instances:
            if session.state == "accepted" and not self._accepted_notice_given:
                show_info("napari-irnet: this image is accepted; its instances stay as they are (undo the acceptance or discard corrections to change them)")
                self._accepted_notice_given = True
            ptable = table_from_records(pred.instances.records, session.model_classes)
            record = session.annotation.apply_proposal(pred.instances.labels, ptable, name, kind, before, after)
            if record is not None and kind == "edit":
                self._after_edit(session)
            if record is not None and session is self._current:
                self._set_status(f"updated: {self._describe(session)}")
        self._refresh_controls()

    def _restore_snapshot(self, session: ImageSession, snap: dict[str, Any]) -> None:
        """Centroid points and parameters of an undone or redone step (the annotation restores the rest)."""
        if "points" in snap:
            pts, edited = snap["points"]
            session.points, session.points_edited = np.asarray(pts, dtype=np.float64), bool(edited)
            layer = find_layer(self._viewer.layers, session.image_id, "centroids")
            self._applying = True
            try:
                if layer is not None:
                    layer.data = session.points
            finally:
                self._applying = False
        if "params" in snap and snap["params"] != session.params:
            session.params = snap["params"]
            self._set_params_widgets(session.params)
        self._refresh_features(session)

    def _resync_cache(self, session: ImageSession, snap: dict[str, Any]) -> None:
        """Bring the cache (seeds, semantic, clusters) back to a restored state; the instances stay."""
        req = _Request(session.params, keep_instances=True, session=session)
        if "points" in snap:
            pts, edited = snap["points"]
            req.centre_points = np.asarray(pts) if edited else None
            req.reset_points = not edited
        self._request(req)

    # ------------------------------------------------------------------ centroids
    def _on_points_changed(self, event) -> None:
        if self._applying or self._current is None or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        if not action.endswith(("added", "removed", "changed")):
            return
        session = self._current
        layer = find_layer(self._viewer.layers, session.image_id, "centroids")
        if layer is None:
            return
        new = np.asarray(layer.data, dtype=np.float64).reshape(-1, 2)[:, -2:].copy()
        if new.shape == session.points.shape and np.allclose(new, session.points):
            return
        self.move_centroids(new)

    def move_centroids(self, points: np.ndarray) -> None:
        """Use these instance centres (y, x in pixels): the instances re-cluster and re-propagate."""
        session = self._current
        if session is None:
            return
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        before = {"points": (session.points, session.points_edited)}
        session.points, session.points_edited = points, True
        after = {"points": (points, True)}
        layer = find_layer(self._viewer.layers, session.image_id, "centroids")
        if layer is not None and (len(layer.data) != len(points) or not np.allclose(layer.data, points)):
            self._applying = True
            try:
                layer.data = points
            finally:
                self._applying = False
        self._request(_Request(self.params, centre_points=points, name="edit centroids", kind="edit", before=before, after=after, session=session))

    def reset_centroids(self, *_) -> None:
        """Forget edited centroids: the clusters come from the displacement field again."""
        session = self._current
        if session is None or not session.points_edited:
            return
        before = {"points": (session.points, True)}
        session.points_edited = False
        self._request(_Request(self.params, reset_points=True, name="reset centroids", kind="edit", before=before, after={}, session=session))

    # ------------------------------------------------------------------ controls
    def _refresh_controls(self) -> None:
        if self._closed:
            return
        running = self._run_worker is not None
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        session = self._current
        has = session is not None
        for w in (self.merge_button, self.split_button, self.delete_button, self.set_class_button, self.next_id_button,
                  self.draw_line_button, self.clear_picks_button, self.accept_button, self.discard_button, self.reset_centroids_button):
            w.enabled = has
        self.undo_button.enabled = has and session.history.can_undo
        self.redo_button.enabled = has and session.history.can_redo
        self.image_state.value = self._describe(session) if has else "–"
