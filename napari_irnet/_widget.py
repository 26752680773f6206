"""The napari dock widget: run IRNet on an image, tune it live, correct the result.

Plugins ▸ napari-irnet ▸ IRNet. The widget holds no algorithm: the networks
and stages run in :mod:`napari_irnet._jobs` (background workers), the edits
are :mod:`napari_irnet.core.edits`, the correction files
:mod:`napari_irnet.core.corrections`, the layers :mod:`napari_irnet._layers`.

Layers of one image are found by their metadata marker, so renaming one is
harmless and a deleted one comes back at the next update.

Keyboard shortcuts (with the ``instances`` layer selected; also in the
buttons' tooltips): Shift-M merge, Shift-S split, Shift-D delete, Shift-C set
class, Shift-N next free id (then paint), Shift-A accept, Shift-K clear
picks, Ctrl-Z undo, Ctrl-Shift-Z redo. Picking: with the ``instances`` layer
in pan/zoom mode, click instances (a click without dragging).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
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
    PushButton,
    Select,
    Slider,
    create_widget,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from . import _layers
from ._jobs import RUN_STEPS, RunResult, UpdateResult, load_model, run_job, update_job
from ._layers import STAGES, VISIBLE_STAGES
from ._recent import checkpoint_choices, remember_checkpoint
from ._session import ImageSession, find_layer, put_layer, stage_layers
from .core.corrections import (
    Corrections,
    corrections_folder,
    delete_corrections,
    load_corrections,
    save_corrections,
)
from .core.edits import (
    EditError,
    EditRecord,
    InstanceInfo,
    LabelDiff,
    accept_all,
    delete,
    features_table,
    instance_at,
    instance_ids,
    merge,
    merge_proposal,
    next_free_id,
    set_class,
    split_by_line,
    split_by_seeds,
    table_from_records,
)
from .core.inference import describe_device, device_choices
from .core.io import InputError, OutputError
from .core.params import Params

if TYPE_CHECKING:  # pragma: no cover
    import napari

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
#: cache stages -> the layers they feed
_INSTANCE_STAGES = {"centroids", "clusters", "iwalk", "instances"}
_SHORTCUTS = {
    "merge": "Shift-M",
    "split": "Shift-S",
    "delete": "Shift-D",
    "set_class": "Shift-C",
    "next_id": "Shift-N",
    "accept": "Shift-A",
    "clear_picks": "Shift-K",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
}
#: how the shortcuts are written on the buttons
_KEY_TEXT = {"Shift-": "⇧", "Control-": "Ctrl+"}


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

    def then(self, later: "_Request") -> "_Request":
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


class IRNetWidget(Container):
    """Dock widget: image, checkpoint, classes, device, Run; live parameters; stages; corrections."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(scrollable=True, labels=False)
        self._viewer = napari_viewer
        self._sessions: dict[str, ImageSession] = {}
        self._current: ImageSession | None = None
        self._run_worker = None
        self._run_image = None  # (layer, image id) of the run in progress
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

        # --- input ---------------------------------------------------
        self.image = create_widget(annotation=Image, label="image", name="image")
        self.checkpoint = ComboBox(label="checkpoint", name="checkpoint", choices=self._checkpoint_choices)
        self.browse = PushButton(text="Browse…", name="browse", tooltip="Choose a checkpoint file (.pt, .pth)")
        self.classes = Select(label="classes", name="classes", choices=self._class_choices)
        self.classes.tooltip = "The classes present in this image (image-level labels); none chosen: the classifier decides"
        self.classes.native.setMaximumHeight(72)
        self.device = ComboBox(label="device", name="device", choices=device_choices(), value="auto")
        self.device_in_use = Label(label="in use", name="device_in_use", value=describe_device("auto"))
        self.run_button = PushButton(text="Run", name="run_button", tooltip="Run both networks once, then every stage")
        self.cancel_button = PushButton(text="Cancel", name="cancel_button", enabled=False)
        self.status = Label(label="status", name="status", value="choose an image and a checkpoint, then Run")
        self.status.native.setWordWrap(True)
        ckpt_row = Container(widgets=[self.checkpoint, self.browse], layout="horizontal", labels=False, label="checkpoint")
        input_box = Container(
            widgets=[self.image, ckpt_row, self.classes, self.device, self.device_in_use, self.status], name="input_box"
        )
        run_row = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)

        # --- live parameters ----------------------------------------
        self.param_widgets: dict[str, Any] = {}
        defaults = Params()
        for name, (cls, lo, hi, step, label) in LIVE_PARAMS.items():
            w = cls(name=name, label=label, min=lo, max=hi, step=step, value=getattr(defaults, name))
            w.tooltip = f"Params.{name}" + (" (fraction of the image area)" if name == "min_fragment_fraction" else "")
            w.changed.connect(self._on_param_changed)
            self.param_widgets[name] = w
        self.reset_params_button = PushButton(text="Reset to the checkpoint's values", name="reset_params_button")
        params_box = Container(widgets=list(self.param_widgets.values()), name="parameters")

        # --- stage visibility ----------------------------------------
        self.show_stage: dict[str, CheckBox] = {}
        for stage in STAGES:
            cb = CheckBox(text=stage, name=f"show_{stage}", value=stage in VISIBLE_STAGES)
            cb.changed.connect(lambda value, s=stage: self._on_show_changed(s, value))
            self.show_stage[stage] = cb
        stages = list(self.show_stage.values())
        stage_rows = [
            Container(widgets=stages[i : i + 4], layout="horizontal", labels=False) for i in range(0, len(stages), 4)
        ]

        # --- corrections ---------------------------------------------
        s = _SHORTCUTS
        self.edit_class = ComboBox(label="class", name="edit_class", choices=self._edit_class_choices)
        self.edit_class.tooltip = "Class for Set class and for newly painted instances"
        self.picked = Label(label="picked", name="picked", value="–")
        self.picked.tooltip = "Click instances to pick them (the instances layer in pan/zoom mode, a click without dragging)"
        self.image_state = Label(label="image", name="image_state", value="–")

        def button(name: str, text: str, key: str | None, tip: str) -> PushButton:
            keys = s[key] if key else ""
            for long, short in _KEY_TEXT.items():
                keys = keys.replace(long, short)
            label = f"{text}  {keys}" if key else text
            return PushButton(text=label, name=name, tooltip=tip + (f" (shortcut {s[key]} on the instances layer)" if key else ""))

        self.merge_button = button("merge_button", "Merge", "merge", "Merge the picked instances into the first one picked")
        self.split_button = button("split_button", "Split", "split", "Split along the path drawn in 'split line', or between two picks in one instance")
        self.delete_button = button("delete_button", "Delete", "delete", "Delete the picked instances (or the selected label)")
        self.set_class_button = button("set_class_button", "Set class", "set_class", "Give the picked instances the class chosen above")
        self.next_id_button = button("next_id_button", "New id", "next_id", "Select the next free id in 'instances' and start painting")
        self.draw_line_button = button("draw_line_button", "Draw split line", None, "Draw a path across one instance in the 'split line' layer, then Split")
        self.clear_picks_button = button("clear_picks_button", "Clear picks", "clear_picks", "Forget the picked instances")
        self.accept_button = button("accept_button", "Accept image", "accept", "Mark every instance and the image as done; saved with the image")
        self.undo_button = button("undo_button", "Undo", "undo", "Undo the last edit, brush stroke or parameter change")
        self.redo_button = button("redo_button", "Redo", "redo", "Redo")
        self.reset_centroids_button = button("reset_centroids_button", "Centroids from field", None, "Forget edited centroids: clusters come from the displacement field again")
        self.discard_button = button("discard_button", "Discard corrections…", None, "Replace every instance with the model's proposal (asks first; undoable)")

        def row(*widgets) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        edit_box = Container(widgets=[self.edit_class, self.picked, self.image_state], name="edit_box")
        buttons = [
            row(self.merge_button, self.split_button),
            row(self.delete_button, self.set_class_button),
            row(self.next_id_button, self.draw_line_button),
            row(self.undo_button, self.redo_button),
            row(self.clear_picks_button, self.reset_centroids_button),
            row(self.accept_button, self.discard_button),
        ]

        self.extend(
            [
                Label(value="<b>Input</b>"),
                input_box,
                run_row,
                Label(value="<b>Live parameters</b>"),
                params_box,
                self.reset_params_button,
                Label(value="<b>Stages shown</b>"),
                *stage_rows,
                Label(value="<b>Corrections</b>"),
                edit_box,
                *buttons,
            ]
        )

        scroll = self.root_native_widget
        if hasattr(scroll, "widget") and scroll.widget() is not None:  # wide enough for the controls
            scroll.setMinimumWidth(scroll.widget().minimumSizeHint().width() + 24)

        self._debounce = QTimer(self.native)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_debounce)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.browse.changed.connect(self._browse_checkpoint)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.device.changed.connect(lambda v: setattr(self.device_in_use, "value", describe_device(v)))
        self.image.changed.connect(self._on_image_changed)
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

        layers_events = self._viewer.layers.events
        layers_events.inserted.connect(self.reset_choices)
        layers_events.removed.connect(self.reset_choices)
        self.reset_choices()
        if self.checkpoint.value:
            self._on_checkpoint_changed(self.checkpoint.value)
        self._on_image_changed(self.image.value)
        self._refresh_controls()

    @property
    def native(self):
        """The scroll area around the controls, so napari docks a widget that scrolls."""
        return self.root_native_widget

    # ------------------------------------------------------------------
    # small helpers

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
            and not self._debounce.isActive()
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

    # ------------------------------------------------------------------
    # checkpoint, classes, image

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
        if not path:
            return
        worker = create_worker(
            load_model,
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
        if path is not None and path != self.checkpoint.value:
            return  # an older choice finished loading late
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
        if path is not None and path != self.checkpoint.value:
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
        if layer is None:
            return
        labels = self._image_labels_for(layer)
        if labels:
            self.classes.value = labels
        info = layer.metadata.get("napari_irnet")
        image_id = info.get("image_id") if isinstance(info, dict) else None
        if image_id and image_id in self._sessions and self._sessions[image_id] is not self._current:
            self._current = self._sessions[image_id]
            self._set_params_widgets(self._current.params)
            self.edit_class.reset_choices()
            self._refresh_controls()

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

    # ------------------------------------------------------------------
    # run

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
            image = _layers.image_to_rgb8(layer.data, bool(layer.rgb))
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
        worker = create_worker(
            run_job,
            self.checkpoint.value,
            image,
            classes,
            None,  # the checkpoint's parameters ...
            self.device.value,
            points,
            self.live_values(),  # ... with the sliders' values
            _progress={"total": RUN_STEPS, "desc": "napari-irnet"},
            _connect={
                "yielded": self._set_status,
                "returned": self._on_run_returned,
                "errored": self._on_run_error,
                "aborted": lambda: self._set_status("run cancelled"),
                "finished": self._on_run_finished,
            },
        )
        self._run_worker = worker
        self._refresh_controls()
        self._set_status("starting …")

    def cancel(self, *_) -> None:
        """Stop the run at its next step."""
        if self._run_worker is not None:
            self._run_worker.quit()
            self._set_status("cancelling …")

    def _on_run_error(self, exc: Exception) -> None:
        self._set_status(f"run failed: {exc}")
        show_error(f"napari-irnet: run failed: {exc}")

    def _on_run_finished(self) -> None:
        self._run_worker = None
        self._run_image = None
        self._refresh_controls()
        if self._pending is not None and self._update_worker is None:
            self._start_update()

    def _on_run_returned(self, result: RunResult) -> None:
        layer, image_id, image = self._run_image
        self.device_in_use.value = result.device
        remember_checkpoint(result.checkpoint)
        self.checkpoint.reset_choices()
        session = self._sessions.get(image_id)
        if session is not None and session.image.shape != image.shape:
            session = None
        if session is None:
            self._start_session(layer, image_id, image, result)
        else:
            self._rerun_session(session, result)
        self._model_classes = list(result.model.classes)
        self.edit_class.reset_choices()
        # sliders moved while the networks ran: bring the stages up to date
        if self.params != self._current.params:
            self._request(_Request(self.params, session=self._current))
        n = len(np.unique(self._current.labels)) - 1
        self._set_status(f"{n} instances on {self._current.image_name} ({result.device})")

    def _start_session(self, layer, image_id: str, image: np.ndarray, result: RunResult) -> None:
        path = getattr(getattr(layer, "source", None), "path", None)
        folder = corrections_folder(layer.name, image, image_path=path)
        pred = result.prediction
        labels = pred.instances.labels.astype(np.int32)
        table = table_from_records(pred.instances.records, result.model.classes)
        session = ImageSession(
            image_id=image_id,
            image_name=layer.name,
            image=image,
            image_path=str(path) if path else None,
            folder=folder,
            result=result,
            labels=labels,
            table=table,
            params=result.cache.params,
            points=np.asarray(pred.centre_points, dtype=np.float64),
            prediction=pred,
        )
        session.edit_classes = list(dict.fromkeys(list(result.classes) + list(result.model.classes)))
        stored = None
        try:
            stored = load_corrections(folder, image)
        except InputError as exc:
            show_warning(f"napari-irnet: stored corrections not used: {exc}")
        self._sessions[image_id] = session
        self._current = session
        if stored is not None:
            if stored.state == "accepted":
                session.labels, session.table = stored.labels.astype(np.int32), dict(stored.instances)
            else:  # keep the person's instances, propose the rest
                session.labels, session.table = merge_proposal(labels, table, stored.labels, stored.instances)
            session.state = stored.state
            show_info(f"napari-irnet: loaded the corrections of {layer.name} ({stored.state}, saved {stored.updated})")
        session.known = session.labels.copy()
        self._show_all_stages(session)

    def _rerun_session(self, session: ImageSession, result: RunResult) -> None:
        session.result = result
        before = {"params": session.params}
        session.params = result.cache.params
        session.edit_classes = list(dict.fromkeys(list(result.classes) + list(result.model.classes)))
        self._apply_prediction(session, result.prediction, None, "re-run", "update", before, {"params": session.params})
        self._put_static_stages(session)

    # ------------------------------------------------------------------
    # layers

    def _put(self, tup, stage: str):
        self._applying = True
        try:
            layer, created = put_layer(self._viewer, tup, visible=self.show_stage[stage].value if stage in self.show_stage else None)
        finally:
            self._applying = False
        if created:
            self._connect_layer(layer, stage)
        return layer

    def _connect_layer(self, layer, stage: str) -> None:
        if stage == "instances":
            layer.events.paint.connect(self._on_paint)
            layer.mouse_drag_callbacks.append(self._on_instances_click)
            keys = {
                "merge": self.merge_picked,
                "split": self.split,
                "delete": self.delete_picked,
                "set_class": self.set_class_of_picked,
                "next_id": self.next_free_id,
                "accept": self.accept,
                "clear_picks": self.clear_picks,
                "undo": self.undo,
                "redo": self.redo,
            }
            for action, func in keys.items():
                layer.bind_key(_SHORTCUTS[action], lambda _layer, f=func: f(), overwrite=True)
        elif stage == "centroids":
            layer.events.data.connect(self._on_points_changed)

    def _put_static_stages(self, session: ImageSession) -> None:
        """CAM, boundary and displacement: they change only with a run."""
        out, classes, sid = session.result.outputs, session.result.model.classes, session.image_id
        for tup in _layers.cam_layers(sid, out, classes):
            self._put(tup, "CAM")
        self._put(_layers.boundary_layer(sid, out), "boundary")
        self._put(_layers.displacement_layer(sid, out), "displacement")

    def _show_all_stages(self, session: ImageSession) -> None:
        sid, pred = session.image_id, session.result.prediction
        self._put_static_stages(session)
        self._put(_layers.seeds_layer(sid, pred.seeds), "seeds")
        self._put(_layers.semantic_layer(sid, pred.semantic, session.model_classes), "semantic")
        self._put_instances(session)
        self._put(_layers.centroids_layer(sid, session.points, session.labels, session.table), "centroids")
        self._refresh_controls()

    def _instances_layer(self, session: ImageSession | None = None):
        """The instances layer of the current image, re-created if it was deleted."""
        session = session or self._current
        if session is None:
            return None
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is None:
            layer = self._put_instances(session)
        return layer

    def _put_instances(self, session: ImageSession):
        tup = _layers.instances_layer(session.image_id, session.labels, session.table, session.model_classes)
        tup[1]["metadata"]["napari_irnet"]["image_name"] = session.image_name
        session.present = tup[1]["features"]["index"][1:]
        layer = self._put(tup, "instances")
        return layer

    def _refresh_features(self, session: ImageSession, instances: bool = True) -> None:
        """Features of the instances layer (and the centroids') after an edit."""
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if instances:
            feats = features_table(session.labels, session.table)
            session.present = feats["index"][1:]
            if layer is not None:
                layer.features = feats
        pts = find_layer(self._viewer.layers, session.image_id, "centroids")
        if pts is not None and len(pts.data) == len(session.points):
            pts.features = _layers.centroid_features(session.points, session.labels, session.table)

    def _on_show_changed(self, stage: str, value: bool) -> None:
        if self._current is None:
            return
        for layer in stage_layers(self._viewer.layers, self._current.image_id, stage):
            layer.visible = bool(value)

    # ------------------------------------------------------------------
    # live updates ("latest wins")

    def _on_param_changed(self, *_) -> None:
        if self._current is None:
            return
        self._debounce.start()

    def _on_debounce(self) -> None:
        """The sliders have been still for DEBOUNCE_MS: re-run what their change touches."""
        session = self._current
        if session is None:
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

    def _start_update(self) -> None:
        """Start the waiting request unless a job runs (it starts when that one finishes)."""
        if self._pending is None or self._update_worker is not None or self._run_worker is not None:
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
        self._update_worker = create_worker(
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
        """Polled by the worker between stages: False once a newer request waits."""
        return generation == self._generation and self._pending is None

    def _on_update_result(self, result: UpdateResult | None) -> None:
        """Instances first (yielded), then the semantic map (returned)."""
        request = self._running_request
        if result is None or request is None or result.generation != self._generation:
            return
        if result.final:
            self._running_request = None
        session = request.session
        if session is None or session.result.cache is not request.cache:
            return  # a new run replaced the cache meanwhile
        before = {"params": session.params, **request.before}
        session.params = result.params
        after = {**request.after, "params": result.params}
        if result.recomputed:
            self._apply_prediction(session, result.prediction, result.recomputed, request.name, request.kind, before, after, keep_instances=request.keep_instances)
        request.applied = True

    def _on_update_error(self, exc: Exception) -> None:
        self._running_request = None
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
        """Show the stages a re-run recomputed; instances keep every protected one."""
        stages = set(STAGES) | _INSTANCE_STAGES | {"swalk"} if recomputed is None else set(recomputed)
        sid = session.image_id
        session.prediction = pred
        if "seeds" in stages:
            self._put(_layers.seeds_layer(sid, pred.seeds), "seeds")
        if stages & {"swalk", "semantic"}:
            self._put(_layers.semantic_layer(sid, pred.semantic, session.model_classes), "semantic")
        if {"centroids", "clusters"} & stages and not session.points_edited:
            before.setdefault("points", (session.points, False))
            session.points = np.asarray(pred.centre_points, dtype=np.float64)
            after["points"] = (session.points, False)
            self._put(_layers.centroids_layer(sid, session.points, session.labels, session.table), "centroids")
        if stages & _INSTANCE_STAGES and not keep_instances:
            if session.state == "accepted":
                if not self._accepted_notice_given:
                    show_info("napari-irnet: this image is accepted; its instances stay as they are (undo the acceptance or discard corrections to change them)")
                    self._accepted_notice_given = True
            else:
                proposed = pred.instances.labels
                ptable = table_from_records(pred.instances.records, session.model_classes)
                labels, table = merge_proposal(proposed, ptable, session.labels, session.table)
                diff = LabelDiff.between(session.labels, labels)
                before = {"table": session.table, "state": session.state, **before}
                after = {"table": table, "state": session.state, **after}
                session.history.push(EditRecord(name, diff, before, after, kind))
                session.labels, session.table = labels, table
                session.known = labels.copy()
                self._put_instances(session)
                self._refresh_features(session, instances=False)
                if kind == "edit":
                    self._after_edit(session)
        self._refresh_controls()

    # ------------------------------------------------------------------
    # centroids

    def _on_points_changed(self, event) -> None:
        if self._applying or self._current is None:
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

    # ------------------------------------------------------------------
    # picking

    def _on_instances_click(self, layer, event):
        if layer.mode != "pan_zoom":
            return
        start = np.asarray(event.position)[-2:]
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.pick_at(layer.world_to_data(start) if hasattr(layer, "world_to_data") else start)

    def pick_at(self, point) -> int:
        """Pick the instance under ``point`` (y, x in pixels); returns its id (0: nothing there)."""
        session = self._current
        if session is None:
            return 0
        point = tuple(float(v) for v in np.asarray(point)[-2:])
        label = instance_at(session.labels, point)
        if label == 0:
            return 0
        session.picks.append((label, point))
        self._show_picks(session)
        return label

    def clear_picks(self, *_) -> None:
        if self._current is not None:
            self._current.picks.clear()
            self._show_picks(self._current)

    def _show_picks(self, session: ImageSession) -> None:
        ids = list(dict.fromkeys(i for i, _ in session.picks))
        self.picked.value = ", ".join(str(i) for i in ids) if ids else "–"
        pts = np.array([p for _, p in session.picks], dtype=np.float64).reshape(-1, 2)
        layer = find_layer(self._viewer.layers, session.image_id, "picks")
        if layer is None and len(pts) == 0:
            return
        if layer is None:
            layer = self._viewer.add_points(
                pts, name="picks", symbol="cross", size=9, face_color="red", border_color="white",
                metadata=_layers.layer_meta("picks", session.image_id),
            )
            self._viewer.layers.selection.active = self._instances_layer(session)
        else:
            layer.data = pts

    def _picked_ids(self) -> list[int]:
        session = self._current
        ids = list(dict.fromkeys(i for i, _ in session.picks)) if session else []
        return [i for i in ids if np.any(session.labels == i)]

    # ------------------------------------------------------------------
    # edits

    def _edit(self, name: str, diff: LabelDiff | None, table: dict[int, InstanceInfo], state: str | None = None) -> None:
        """Apply one person's edit through the instances layer and record it for undo."""
        session = self._current
        new_state = state or "corrected"
        record = EditRecord(
            name,
            diff if diff else None,
            {"table": session.table, "state": session.state},
            {"table": table, "state": new_state},
        )
        self._apply_record(session, record, reverse=False)
        session.history.push(record)
        session.picks.clear()
        self._show_picks(session)
        self._after_edit(session)

    def _write_labels(self, session: ImageSession, diff: LabelDiff, reverse: bool) -> None:
        layer = self._instances_layer(session)
        values = (diff.old if reverse else diff.new).astype(session.labels.dtype)
        self._applying = True
        try:
            if layer is not None and layer.data is session.labels:
                with layer.block_history():
                    layer.data_setitem(diff.indices(), values)
            else:
                session.labels.reshape(-1)[diff.index] = values
                if layer is not None:
                    layer.data = session.labels
        finally:
            self._applying = False
        if session.known is not None:
            diff.apply(session.known, reverse=reverse)

    def _apply_record(self, session: ImageSession, record: EditRecord, reverse: bool) -> None:
        snap = record.before if reverse else record.after
        if record.diff is not None:
            self._write_labels(session, record.diff, reverse)
        if "table" in snap:
            session.table = dict(snap["table"])
        if "state" in snap:
            session.state = snap["state"]
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

    def _after_edit(self, session: ImageSession) -> None:
        self._save(session)
        self._refresh_controls()

    def _guard(self, func, *args, **kwargs):
        """Run an edit; a refused edit becomes a warning, never an exception in the viewer."""
        if self._current is None:
            show_warning("napari-irnet: run the model on an image first")
            return None
        try:
            return func(*args, **kwargs)
        except EditError as exc:
            show_warning(f"napari-irnet: {exc}")
            return None

    def merge_picked(self, *_) -> None:
        """Merge the picked instances into the first one picked."""
        self._guard(self._merge)

    def _merge(self) -> None:
        session, ids = self._current, self._picked_ids()
        if len(ids) < 2:
            raise EditError("pick two instances to merge (click them with the instances layer in pan/zoom mode)")
        diff = merge(session.labels, ids)
        infos = [session.table.get(i) for i in ids]
        first = infos[0] or InstanceInfo(self.edit_class.value or "")
        score = max((i.score for i in infos if i is not None), default=1.0)
        table = {k: v for k, v in session.table.items() if k not in ids[1:]}
        table[ids[0]] = InstanceInfo(first.class_name, score, "edited")
        self._edit(f"merge {ids}", diff, table)

    def delete_picked(self, *_) -> None:
        """Delete the picked instances (or the instances layer's selected label)."""
        self._guard(self._delete)

    def _delete(self) -> None:
        session, ids = self._current, self._picked_ids()
        if not ids:
            layer = self._instances_layer(session)
            sel = int(layer.selected_label) if layer is not None else 0
            ids = [sel] if sel and np.any(session.labels == sel) else []
        if not ids:
            raise EditError("pick the instances to delete (or select their label)")
        diff = delete(session.labels, ids)
        table = {k: v for k, v in session.table.items() if k not in ids}
        self._edit(f"delete {ids}", diff, table)

    def split(self, line: np.ndarray | None = None, seeds: np.ndarray | None = None) -> None:
        """Split an instance along ``line`` / the drawn split line, or between two seeds.

        Without arguments: the last path in the ``split line`` layer if there
        is one, else the picks when two or more lie in one instance.
        """
        self._guard(self._split, line, seeds)

    def _split(self, line, seeds) -> None:
        session = self._current
        line_layer = find_layer(self._viewer.layers, session.image_id, "split line")
        if line is None and seeds is None:
            if line_layer is not None and len(line_layer.data):
                line = np.asarray(line_layer.data[-1])[:, -2:]
            elif len(session.picks) >= 2:
                seeds = np.array([p for _, p in session.picks])
            else:
                raise EditError("draw a split line across an instance (Draw split line), or pick two points inside it")
        if line is not None:
            diff, new_ids = split_by_line(session.labels, line, new_id=next_free_id(session.labels, session.table))
            if line_layer is not None:
                line_layer.data = []
        else:
            diff, new_ids = split_by_seeds(session.labels, seeds, new_id=next_free_id(session.labels, session.table), image=session.image)
        old_ids = [int(i) for i in np.unique(diff.old) if i]
        base = session.table.get(old_ids[0], InstanceInfo(self.edit_class.value or "")) if old_ids else InstanceInfo("")
        table = dict(session.table)
        for i in old_ids + list(new_ids):
            table[i] = InstanceInfo(base.class_name, base.score, "edited")
        self._edit(f"split {old_ids} -> {old_ids + new_ids}", diff, table)

    def set_class_of_picked(self, class_name: str | None = None) -> None:
        """Give the picked instances (or the selected label) ``class_name`` (default: the class menu)."""
        self._guard(self._set_class, class_name)

    def _set_class(self, class_name) -> None:
        session = self._current
        class_name = class_name or self.edit_class.value
        if not class_name:
            raise EditError("choose a class first")
        ids = self._picked_ids()
        if not ids:
            layer = self._instances_layer(session)
            sel = int(layer.selected_label) if layer is not None else 0
            ids = [sel] if sel and np.any(session.labels == sel) else []
        if not ids:
            raise EditError("pick the instances whose class to change")
        self._edit(f"class of {ids} -> {class_name}", None, set_class(session.table, ids, class_name))

    def next_free_id(self, *_) -> int:
        """Select the next free id in the instances layer and switch it to painting."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return 0
        new_id = next_free_id(session.labels, session.table)
        layer = self._instances_layer(session)
        layer.selected_label = new_id
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        return new_id

    def draw_split_line(self, *_) -> None:
        """Add (or select) the ``split line`` Shapes layer in path mode."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        layer = find_layer(self._viewer.layers, session.image_id, "split line")
        if layer is None:
            layer = self._viewer.add_shapes(
                name="split line", edge_color="red", edge_width=2, face_color="transparent",
                metadata=_layers.layer_meta("split line", session.image_id),
            )
        self._viewer.layers.selection.active = layer
        layer.mode = "add_path"

    def accept(self, *_) -> None:
        """Mark every instance and the image as accepted (saved with the image)."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        table = accept_all(session.labels, session.table, self.edit_class.value or "")
        self._edit("accept image", None, table, state="accepted")
        n = len(instance_ids(session.labels))
        self._set_status(f"{session.image_name} accepted ({n} instances); saved in {session.folder}")

    def set_instances(self, labels: np.ndarray, classes: dict[int, str] | None = None) -> None:
        """Replace the instances with a given map (e.g. from another tool); undoable.

        ``classes`` maps ids to class names (default: the class menu's). The
        instances count as edited, so parameter changes keep them.
        """
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        labels = np.asarray(labels)
        if labels.shape != session.labels.shape:
            show_error(f"napari-irnet: the map is {labels.shape}, the image {session.labels.shape}")
            return
        classes = classes or {}
        default = self.edit_class.value or ""
        table = {int(i): InstanceInfo(classes.get(int(i), default), 1.0, "edited") for i in np.unique(labels) if i}
        self._edit("replace instances", LabelDiff.between(session.labels, labels.astype(session.labels.dtype)), table)

    def discard_corrections(self, *_) -> None:
        """After asking: replace every instance with the model's current proposal (undoable)."""
        session = self._current
        if session is None:
            return
        if session.protected_count() == 0 and session.state != "accepted":
            show_info("napari-irnet: nothing to discard")
            return
        if not self._confirm("Discard every hand-edited and accepted instance of this image and use the model's proposal?"):
            return
        pred = session.prediction or session.result.prediction
        labels = pred.instances.labels.astype(np.int32)
        table = table_from_records(pred.instances.records, session.model_classes)
        diff = LabelDiff.between(session.labels, labels)
        self._edit("discard corrections", diff, table, state="proposed")

    def _confirm(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "napari-irnet", question)
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------
    # painting

    def _on_paint(self, event=None) -> None:
        """A brush, fill or eraser stroke ended (napari may emit this before writing the pixels)."""
        if self._applying or self._current is None or self._paint_check_queued:
            return
        self._paint_check_queued = True
        QTimer.singleShot(0, self._record_paint)

    def _record_paint(self) -> None:
        """Record what the brush changed since we last looked; mark the touched instances edited."""
        self._paint_check_queued = False
        session = self._current
        if session is None or session.known is None:
            return
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is None:
            return
        data = layer.data
        if data is not session.labels:
            session.labels = np.asarray(data)
        diff = LabelDiff.between(session.known, session.labels)
        if not diff:
            return
        session.known = session.labels.copy()
        table = dict(session.table)
        default = self.edit_class.value or (session.classes[0] if session.classes else "")
        for i in diff.ids():
            i = int(i)
            info = table.get(i)
            table[i] = InstanceInfo(default, 1.0, "edited") if info is None else replace(info, state="edited" if info.state != "accepted" else "accepted")
        record = EditRecord("paint", diff, {"table": session.table, "state": session.state}, {"table": table, "state": "corrected"})
        session.table, session.state = table, "corrected"
        session.history.push(record)
        self._refresh_features(session)
        self._after_edit(session)

    # ------------------------------------------------------------------
    # undo / redo

    def undo(self, *_) -> None:
        """Undo the last edit, paint stroke or parameter change of this image."""
        self._step(undo=True)

    def redo(self, *_) -> None:
        self._step(undo=False)

    def _step(self, undo: bool) -> None:
        session = self._current
        if session is None:
            return
        # a re-run waiting or running would apply on top of the state being restored
        self._generation += 1
        self._pending = None
        self._running_request = None
        self._debounce.stop()
        record = session.history.undo() if undo else session.history.redo()
        if record is None:
            show_info(f"napari-irnet: nothing to {'undo' if undo else 'redo'}")
            return
        params_before = session.params
        self._apply_record(session, record, reverse=undo)
        if session.params != params_before or "points" in (record.before if undo else record.after):
            # bring the cache (seeds, semantic, clusters) back to the restored state; instances stay
            snap = record.before if undo else record.after
            pts, edited = snap.get("points", (session.points, session.points_edited))
            req = _Request(session.params, keep_instances=True, session=session)
            if "points" in snap:
                req.centre_points = np.asarray(pts) if edited else None
                req.reset_points = not edited
            self._request(req)
        self._set_status(f"{'undid' if undo else 'redid'}: {record.name}")
        self._after_edit(session)

    # ------------------------------------------------------------------
    # storage and controls

    def _save(self, session: ImageSession) -> None:
        """Store the corrections with the image; nothing is stored for a pure proposal."""
        try:
            if session.state == "proposed" and session.protected_count() == 0:
                delete_corrections(session.folder)
                return
            corr = Corrections(
                labels=session.labels,
                instances=session.table,
                state=session.state,
                image_name=session.image_name,
                fingerprint=session.fingerprint,
                classes=session.classes,
                checkpoint=session.result.checkpoint,
                params=session.params.to_dict(),
            )
            save_corrections(session.folder, corr)
        except (OutputError, OSError, ValueError) as exc:
            show_error(f"napari-irnet: corrections not saved: {exc}")

    def _refresh_controls(self) -> None:
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
        if has:
            n = len(session.present_ids())
            self.image_state.value = f"{session.state} · {n} instances · {session.protected_count()} edited/accepted"
        else:
            self.image_state.value = "–"
