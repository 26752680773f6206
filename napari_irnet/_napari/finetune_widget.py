"""The Fine-tune dock widget: train IRNet further from the images a person corrected.

Plugins ▸ napari-irnet ▸ Fine-tune IRNet. The widget holds no algorithm: the
images are gathered and trained on in :mod:`napari_irnet._napari.finetune_jobs`
(a background worker), which calls :mod:`napari_irnet.core.finetune`.

- Images: the image layers open in the viewer whose stored corrections (kept
  by the IRNet panel) are *corrected* or *accepted*, and optionally a folder
  of images with a labels file, as for ``napari-irnet finetune``.
- Start runs the training; Stop ends it at the next step. A stopped run makes
  no new version (the checkpoint it started from is never written); its state
  is kept next to the versions, so Start with the same images and settings
  continues where it stopped.
- A finished run is saved as a new version (``<checkpoint>.versions/v0001.pt``,
  ...), which the IRNet panel then uses for the next image. Any version (or
  the original) can be taken back with "Use this version".
- "Compare on image" runs the IRNet panel's current image with the
  chosen version and adds ``instances (v1)`` / ``semantic (v1)`` beside the
  panel's ``instances`` (and the old model's proposal when the shown
  instances are corrections).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    EmptyWidget,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QPointF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ..core.edits import features_table, table_from_records
from ..core.inference import describe_device, device_choices
from ..core.io import InputError
from ..core.params import TrainParams
from ..core.project import ProjectError
from . import layers as _layers
from .context import ViewerContext
from .finetune_jobs import (
    PANEL_TRAIN_PARAMS,
    FinetuneResult,
    FolderSource,
    TrainingImage,
    finetune_job,
    version_choices,
    version_label,
    viewer_image,
)
from .jobs import RUN_STEPS, RunResult, load_model, run_job
from .stores import store_for_layer
from .workers import start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: metadata marker of the comparison layers (a stage the IRNet panel never looks for)
COMPARE_STAGE = "compare"
#: ms of quiet after layer changes before the image list is refreshed
REFRESH_MS = 300


class LossPlot(QWidget):
    """The training loss per step, drawn as a polyline (no plotting library)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("fine-tuning loss per step")

    @property
    def points(self) -> list[tuple[int, float]]:
        """(step, loss) pairs drawn so far."""
        return list(zip(self._steps, self._losses))

    def add(self, step: int, loss: float) -> None:
        self._steps.append(int(step))
        self._losses.append(float(loss))
        self.update()

    def clear(self) -> None:
        self._steps.clear()
        self._losses.clear()
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text = pal.color(pal.ColorRole.WindowText)
        frame = QColor(text)
        frame.setAlpha(90)
        w, h = self.width(), self.height()
        left, right, top, bottom = 46, 8, 8, 18
        pw, ph = max(1, w - left - right), max(1, h - top - bottom)
        painter.setPen(QPen(frame, 1))
        painter.drawRect(left, top, pw, ph)
        painter.setPen(text)
        pts = [(s, v) for s, v in zip(self._steps, self._losses) if math.isfinite(v)]
        if not pts:
            painter.drawText(left, top, pw, ph, Qt.AlignmentFlag.AlignCenter, "loss: no steps yet")
            return
        s0, s1 = pts[0][0], pts[-1][0]
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        xs = max(1, s1 - s0)

        def to_xy(step: int, value: float) -> QPointF:
            x = left + (step - s0) / xs * pw if s1 > s0 else left + pw / 2
            y = top + (hi - value) / (hi - lo) * ph
            return QPointF(x, y)

        painter.drawText(2, top, left - 4, 14, Qt.AlignmentFlag.AlignRight, f"{hi:.3g}")
        painter.drawText(2, top + ph - 14, left - 4, 14, Qt.AlignmentFlag.AlignRight, f"{lo:.3g}")
        painter.drawText(left, top + ph + 2, pw, 14, Qt.AlignmentFlag.AlignLeft, f"step {s0}")
        painter.drawText(left, top + ph + 2, pw, 14, Qt.AlignmentFlag.AlignRight, f"step {s1}  loss {pts[-1][1]:.4g}")
        painter.setPen(QPen(QColor(255, 140, 0), 1.6))
        if len(pts) == 1:
            p = to_xy(*pts[0])
            painter.drawEllipse(p, 2.5, 2.5)
        else:
            painter.drawPolyline(QPolygonF([to_xy(s, v) for s, v in pts]))


class FinetuneWidget(Container):
    """Dock widget: images, epochs, learning rate, device; Start/Stop; loss; versions; compare."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True)
        self._viewer = napari_viewer
        self.context = ViewerContext.of(napari_viewer)
        self._worker = None
        self._stop_requested = False
        self._compare_worker = None
        self._compare_args: dict[str, Any] | None = None
        self._load_worker = None
        self._found: dict[str, TrainingImage] = {}  # layer name -> image with corrections
        self._seen: set[str] = set()
        #: layer name -> (its data, RGB image, corrections folder, state-file stamp, result): see refresh_images
        self._layer_cache: dict[str, tuple] = {}
        self._skipped: dict[str, str] = {}  # layer name -> why its corrections are not used
        #: the last finished or stopped run
        self.last_result: FinetuneResult | None = None
        self._closed = False  # the Qt widget is gone (viewer closed): workers' late results are dropped

        defaults = TrainParams()
        # --- what to train -----------------------------------------
        self.checkpoint = FileEdit(label="start from", name="checkpoint", mode="r", filter="Checkpoints (*.pt *.pth)", value=None, nullable=True)
        self.checkpoint.tooltip = "The checkpoint to fine-tune (never written); empty: the IRNet panel's"
        self.from_panel_button = PushButton(text="From IRNet panel", name="from_panel_button")
        self.images = Select(label="viewer images", name="images", choices=self._image_choices)
        self.images.tooltip = "Image layers whose corrections are saved as corrected or accepted (IRNet panel)"
        self.images.native.setMaximumHeight(110)
        self.refresh_button = PushButton(text="Refresh", name="refresh_button", tooltip="Look again for corrected and accepted images")
        self.images_dir = FileEdit(label="images folder", name="images_dir", mode="d", value=None, nullable=True)
        self.images_dir.tooltip = "Optional: a folder of images too, as for `napari-irnet finetune`"
        self.labels_file = FileEdit(label="labels file", name="labels_file", mode="r", filter="Labels (*.csv *.json)", value=None, nullable=True)
        self.corrections_dir = FileEdit(label="corrections", name="corrections_dir", mode="d", value=None, nullable=True)
        self.corrections_dir.tooltip = "Where the folder's corrections are (empty: <images folder>/napari-irnet)"
        self.weak = CheckBox(text="uncorrected folder images too", name="weak", value=True)
        self.weak.tooltip = "Also train on the folder's images without corrections, with their weak labels from the CAMs"

        # --- parameters (TrainParams names) --------------------------------
        self.finetune_epochs = SpinBox(label="epochs", name="finetune_epochs", min=1, max=10_000, value=defaults.finetune_epochs)
        self.finetune_learning_rate = FloatSpinBox(
            label="learning rate", name="finetune_learning_rate", min=1e-6, max=1.0, step=1e-3, value=defaults.finetune_learning_rate
        )
        self.finetune_learning_rate.native.setDecimals(6)
        self.correction_weight = SpinBox(label="correction weight", name="correction_weight", min=1, max=1000, value=defaults.correction_weight)
        self.correction_weight.tooltip = "How many times a corrected image is drawn per epoch (a weakly labelled one: once)"
        self.weak_displacement_weight = FloatSpinBox(
            label="weak displ. weight", name="weak_displacement_weight", min=0.0, max=1.0, step=0.05,
            value=defaults.weak_displacement_weight,
        )  # fmt: skip
        self.weak_displacement_weight.tooltip = (
            "How much the uncorrected images' weak labels teach the displacement (instance centres) next to the corrections: "
            "1 as much, 0 not at all"
        )
        self.finetune_reset_displacement = CheckBox(
            text="relearn the displacement", name="finetune_reset_displacement",
            value=defaults.finetune_reset_displacement,
        )  # fmt: skip
        self.finetune_reset_displacement.tooltip = (
            "Always start the displacement branch (instance centres) afresh and learn it from the corrections. "
            "Unticked, this happens only when the model's field has collapsed on the corrected images "
            "(it finds one instance per region)"
        )
        self.finetune_cam = CheckBox(text="CAM learns the corrected classes", name="finetune_cam", value=defaults.finetune_cam)
        self.finetune_cam.tooltip = "Also train the CAM network per pixel on the class maps of the corrected images"
        self.device = ComboBox(label="device", name="device", choices=device_choices(), value="auto")
        self.device_in_use = Label(label="in use", name="device_in_use", value=describe_device("auto"))

        # --- run --------------------------------------------------------
        self.start_button = PushButton(text="Start", name="start_button")
        self.stop_button = PushButton(text="Stop", name="stop_button", enabled=False)
        self.stop_button.tooltip = "End at the next step without a new version (Start again with the same images and settings continues)"
        self.progress = ProgressBar(label="progress", name="progress", min=0, max=1, value=0)
        self.status = Label(label="status", name="status", value="accept or correct images in the IRNet panel, then Start")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock
        self.loss_plot = LossPlot()
        plot_holder = EmptyWidget(name="loss_plot", label="loss")
        box = plot_holder.native.layout()
        if box is None:
            box = QVBoxLayout()
            plot_holder.native.setLayout(box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.loss_plot)

        # --- versions and comparison ---------------------------------------
        self.use_new = CheckBox(text="IRNet panel uses new versions", name="use_new", value=True)
        self.versions = ComboBox(label="versions", name="versions", choices=self._version_choices)
        self.use_version_button = PushButton(text="Use this version", name="use_version_button")
        self.use_version_button.tooltip = "Roll back or forward: fine-tune from this version, and use it in the IRNet panel"
        self.compare_button = PushButton(text="Compare on image", name="compare_button")
        self.compare_button.tooltip = "Run the IRNet panel's current image with the chosen version; adds 'instances (vN)' layers"

        self.extend(
            [
                Label(value="<b>Images and model</b>"),
                Container(widgets=[self.checkpoint, self.from_panel_button], layout="horizontal", labels=False, label="start from"),
                self.images,
                self.refresh_button,
                self.images_dir,
                self.labels_file,
                self.corrections_dir,
                self.weak,
                Label(value="<b>Training</b>"),
                self.finetune_epochs,
                self.finetune_learning_rate,
                self.correction_weight,
                self.weak_displacement_weight,
                self.finetune_reset_displacement,
                self.finetune_cam,
                self.device,
                self.device_in_use,
                Container(widgets=[self.start_button, self.stop_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
                plot_holder,
                Label(value="<b>Versions</b>"),
                self.use_new,
                self.versions,
                Container(widgets=[self.use_version_button, self.compare_button], layout="horizontal", labels=False),
            ]
        )

        self._refresh_timer = QTimer(self.native)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh_images)

        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.refresh_button.changed.connect(self.refresh_images)
        self.from_panel_button.changed.connect(self.take_panel_checkpoint)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.device.changed.connect(lambda v: setattr(self.device_in_use, "value", describe_device(v)))
        self.use_version_button.changed.connect(lambda *_: self.use_version())
        self.compare_button.changed.connect(self.compare)
        events = self._viewer.layers.events
        events.inserted.connect(self._schedule_refresh)
        events.removed.connect(self._schedule_refresh)
        self.native.destroyed.connect(self._on_destroyed)

        self.take_panel_checkpoint()
        self.refresh_images()
        self._refresh_controls()

    # ------------------------------------------------------------------
    # helpers

    @property
    def native(self):
        """The scroll area around the controls, so napari docks a widget that scrolls (and stays narrow)."""
        return self.root_native_widget

    def _on_destroyed(self, *_) -> None:
        """The panel was closed: a running fine-tuning stops at its next step, late results are dropped."""
        self._closed = True
        self._stop_requested = True
        self._refresh_timer = None

    @property
    def idle(self) -> bool:
        """True when nothing runs (tests wait for this)."""
        return self._worker is None and self._compare_worker is None and self._load_worker is None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _checkpoint_path(self) -> str | None:
        value = self.checkpoint.value
        return str(value) if value else None

    def settings(self) -> dict[str, Any]:
        """The TrainParams fields set in the panel."""
        return {
            "finetune_epochs": int(self.finetune_epochs.value),
            "finetune_learning_rate": float(self.finetune_learning_rate.value),
            "correction_weight": int(self.correction_weight.value),
            "weak_displacement_weight": float(self.weak_displacement_weight.value),
            "finetune_reset_displacement": bool(self.finetune_reset_displacement.value),
            "finetune_cam": bool(self.finetune_cam.value),
        }

    def _refresh_controls(self) -> None:
        running = self._worker is not None
        self.start_button.enabled = not running
        self.stop_button.enabled = running and not self._stop_requested
        self.compare_button.enabled = self._compare_worker is None and bool(self.versions.value)
        self.use_version_button.enabled = not running and bool(self.versions.value)
        for w in (self.checkpoint, self.from_panel_button, self.images_dir, self.labels_file, self.corrections_dir,
                  self.finetune_epochs, self.finetune_learning_rate, self.correction_weight,
                  self.weak_displacement_weight, self.finetune_reset_displacement, self.finetune_cam, self.device):
            w.enabled = not running

    # ------------------------------------------------------------------
    # checkpoint and versions

    def take_panel_checkpoint(self, *_) -> None:
        """Fine-tune the checkpoint the IRNet panel uses."""
        path = self.context.checkpoint or None
        if path and str(path) != self._checkpoint_path():
            self.checkpoint.value = path

    def set_checkpoint(self, path: str | Path) -> None:
        """Fine-tune ``path`` from now on."""
        self.checkpoint.value = Path(path).expanduser()

    def _on_checkpoint_changed(self, *_) -> None:
        path = self._checkpoint_path()
        self.versions.reset_choices()
        if path in [c[1] for c in self._version_choices()]:
            self.versions.value = path
        self._refresh_controls()
        if not path or self.running:
            return
        # show the checkpoint's own fine-tuning settings
        self._load_worker = start_worker(
            load_model,
            path,
            _connect={
                "returned": lambda model, p=path: self._on_model_loaded(model, p),
                "errored": lambda exc, p=path: None if self._closed else self._set_status(f"cannot read {Path(p).name}: {exc}"),
                "finished": self._on_load_finished,
            },
        )

    def _on_load_finished(self) -> None:
        self._load_worker = None
        if self._closed:
            return
        self._refresh_controls()

    def _on_model_loaded(self, model, path: str) -> None:
        if self._closed:
            return
        if path != self._checkpoint_path():
            return
        tp = model.train_params
        for name in PANEL_TRAIN_PARAMS:
            getattr(self, name).value = getattr(tp, name)
        if "irn" in model.untrained_networks():
            self._set_status(f"{Path(path).name} has no trained IRNet yet: train it first (napari-irnet train-irn)")

    def _version_choices(self, *_) -> list[tuple[str, str]]:
        return version_choices(self._checkpoint_path())

    def use_version(self, path: str | Path | None = None) -> None:
        """Use a version (default: the one chosen in the menu) here and in the IRNet panel."""
        path = str(path or self.versions.value or "")
        if not path:
            show_warning("napari-irnet: no version to use")
            return
        self.set_checkpoint(path)
        self.context.checkpoint = path
        self._set_status(f"the IRNet panel now uses {version_label(path)} ({Path(path).name})")

    # ------------------------------------------------------------------
    # images

    def _schedule_refresh(self, *_) -> None:
        if not self._closed:
            self._refresh_timer.start()

    def _image_choices(self, *_) -> list[tuple[str, str]]:
        found = getattr(self, "_found", {})
        return [(f"{name}  ({t.state})", name) for name, t in found.items()]

    def refresh_images(self, *_) -> list[str]:
        """Look for image layers with corrected or accepted corrections; returns their names.

        Newly found images are selected; the selection of the others stays.
        """
        found: dict[str, TrainingImage] = {}
        skipped: dict[str, str] = {}
        cache: dict[str, tuple] = {}
        for layer in list(self._viewer.layers):
            if not isinstance(layer, Image) or layer.multiscale or _layers.stage_of(layer.metadata) is not None:
                continue
            path = getattr(getattr(layer, "source", None), "path", None)
            entry = self._layer_cache.get(layer.name)
            if entry is None or entry[0] is not layer.data:
                # converting and fingerprinting the pixels is the costly part: once per data array
                try:
                    image = _layers.layer_to_rgb8(layer)
                except ValueError:
                    continue
                try:
                    store = store_for_layer(layer, image, projects=self.context.project_at)
                except (ProjectError, OSError) as exc:
                    skipped[layer.name] = str(exc)
                    continue
                entry = (layer.data, image, store, None, None)
            _, image, store, stamp, result = entry
            now = store.stamp()
            if now != stamp or now is None:  # the corrections changed (or cannot be stamped): read them again
                try:
                    result = viewer_image(layer.name, image, store, str(path or ""))
                except (InputError, OSError, ValueError) as exc:
                    result = exc
            cache[layer.name] = (layer.data, image, store, now, result)
            if isinstance(result, Exception):
                skipped[layer.name] = str(result)
            elif result is not None:
                found[layer.name] = result
        self._layer_cache = cache
        before = set(self.images.value)
        new = [n for n in found if n not in self._seen]
        self._found, self._skipped = found, skipped
        self._seen |= set(found)
        self.images.reset_choices()
        self.images.value = [n for n in found if n in before or n in new]
        return list(found)

    def selected_images(self) -> list[TrainingImage]:
        return [self._found[n] for n in self.images.value if n in self._found]

    def _folder_source(self) -> FolderSource | None:
        images_dir, labels = self.images_dir.value, self.labels_file.value
        if not images_dir and not labels:
            return None
        if not images_dir or not labels:
            raise InputError("a folder of images needs both the images folder and the labels file")
        corr = self.corrections_dir.value
        return FolderSource(Path(images_dir), Path(labels), Path(corr) if corr else None, bool(self.weak.value))

    # ------------------------------------------------------------------
    # run

    def start(self, *_) -> None:
        """Fine-tune in a background worker on the chosen images."""
        if self._worker is not None:
            show_info("napari-irnet: fine-tuning is already running")
            return
        if not self._checkpoint_path():
            self.take_panel_checkpoint()
        checkpoint = self._checkpoint_path()
        if not checkpoint:
            show_warning("napari-irnet: choose the checkpoint to fine-tune (start from)")
            return
        self.refresh_images()
        images = self.selected_images()
        try:
            folder = self._folder_source()
        except InputError as exc:
            show_warning(f"napari-irnet: {exc}")
            return
        if not images and folder is None:
            show_warning("napari-irnet: no images chosen: accept or correct an image in the IRNet panel (then Refresh), or give a folder")
            return
        self._stop_requested = False
        self.loss_plot.clear()
        self.progress.max, self.progress.value = 1, 0
        self._worker = start_worker(
            finetune_job,
            checkpoint,
            images,
            self.settings(),
            self.device.value,
            self._should_stop,
            folder=folder,
            _connect={
                "yielded": self._on_yielded,
                "returned": self._on_returned,
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self._refresh_controls()
        self._set_status(f"starting from {Path(checkpoint).name} on {len(images)} viewer image(s){' and a folder' if folder else ''} …")

    def stop(self, *_) -> None:
        """End the run at its next step; no new version is made."""
        if self._worker is None:
            return
        self._stop_requested = True
        self._set_status("stopping at the next step …")
        self._refresh_controls()

    def _should_stop(self) -> bool:
        """Polled by the training loop before every step (from the worker thread)."""
        return self._stop_requested

    def _on_yielded(self, record: dict) -> None:
        if self._closed:
            return
        stage = record.get("stage")
        if stage == "loading":
            self._set_status("loading the checkpoint and images …")
        elif stage == "labels":
            self.progress.max, self.progress.value = int(record["total"]), int(record["done"])
            self._set_status(f"training targets: {record['done']}/{record['total']} images")
        elif stage == "finetune":
            self.progress.max = max(1, int(record["max_step"]))
            self.progress.value = int(record["step"])
            for step, loss in record.get("earlier_losses", ()):  # a resumed run: its steps before the stop
                self.loss_plot.add(int(step), float(loss))
            self.loss_plot.add(int(record["step"]), float(record["loss"]))
            resumed = f" (resumed at step {record['resumed_from']})" if "resumed_from" in record else ""
            self._set_status(f"epoch {record['epoch'] + 1}, step {record['step']}/{record['max_step']}: loss {record['loss']:.4f}{resumed}")

    def _on_returned(self, result: FinetuneResult) -> None:
        if self._closed:
            return
        self.last_result = result
        self.device_in_use.value = result.device
        if result.stopped or result.path is None:
            self._set_status(
                f"stopped after {result.steps} steps: no new version, {Path(result.checkpoint).name} unchanged "
                "(Start with the same images and settings continues)"
            )
            return
        label = version_label(result.path)
        final = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
        self.set_checkpoint(result.path)  # the next fine-tuning continues from it
        text = f"saved {label}: {result.path} ({result.steps} steps{final})"
        if result.note:
            text += f"; {result.note}"
        if self.use_new.value:
            self.context.checkpoint = result.path
            text += "; the IRNet panel uses it for the next image"
        self._set_status(text)
        show_info(f"napari-irnet: fine-tuned model saved as {label}")

    def _on_error(self, exc: Exception) -> None:
        if self._closed:
            return
        self._set_status(f"fine-tuning failed: {exc}")
        show_error(f"napari-irnet: fine-tuning failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:
            return
        self._stop_requested = False
        self._refresh_controls()

    # ------------------------------------------------------------------
    # compare

    def compare(self, *_) -> None:
        """Run the IRNet panel's current image with the chosen version; add its result as layers."""
        if self._compare_worker is not None:
            return
        path = str(self.versions.value or "")
        session = self.context.current
        if not path:
            show_warning("napari-irnet: no version to compare")
            return
        if session is None:
            show_warning("napari-irnet: run the IRNet panel on an image first")
            return
        self._compare_args = {"session": session, "path": path}
        self._compare_worker = start_worker(
            run_job,
            path,
            session.image,
            session.classes,
            session.params,
            self.device.value,
            _progress={"total": RUN_STEPS, "desc": "napari-irnet compare"},
            _connect={
                "yielded": lambda text: self._set_status(f"compare: {text}"),
                "returned": self._on_compare_returned,
                "errored": lambda exc: (self._set_status(f"compare failed: {exc}"), show_error(f"napari-irnet: compare failed: {exc}")),
                "finished": self._on_compare_finished,
            },
        )
        self._refresh_controls()

    def _on_compare_finished(self) -> None:
        self._compare_worker = None
        self._compare_args = None
        if self._closed:
            return
        self._refresh_controls()

    def _on_compare_returned(self, result: RunResult) -> None:
        if self._closed:
            return
        session, path = self._compare_args["session"], self._compare_args["path"]
        classes = list(result.model.classes)
        new_label = version_label(path)
        inst = result.prediction.instances
        table = table_from_records(inst.records, classes)
        self._put_compare(session, new_label, "instances", inst.labels.astype(np.int32), features_table(inst.labels, table), classes)
        self._put_compare(session, new_label, "semantic", result.prediction.semantic, None, classes, visible=False)
        old_label = version_label(session.result.checkpoint)
        old = session.prediction or session.result.prediction
        n_old = None
        if old is not None and old_label != new_label:
            old_labels = old.instances.labels
            n_old = len(np.unique(old_labels)) - 1
            if not np.array_equal(old_labels, session.labels):  # the shown instances are corrections
                old_table = table_from_records(old.instances.records, list(session.result.model.classes))
                self._put_compare(session, old_label, "instances", old_labels.astype(np.int32), features_table(old_labels, old_table), classes)
        n_new = len(np.unique(inst.labels)) - 1
        was = f" ({old_label}: {n_old})" if n_old is not None else ""
        self._set_status(f"{session.image_name}: {new_label} finds {n_new} instances{was}; see 'instances ({new_label})'")

    def _put_compare(self, session, label: str, kind: str, data: np.ndarray, features, classes, visible: bool = True):
        """Add or update the comparison layer ``<kind> (<label>)`` of the session's image."""
        marker = {"stage": COMPARE_STAGE, "kind": kind, "image": session.image_id, "version": label, "classes": list(classes)}
        for layer in self._viewer.layers:
            info = _layers.stage_of(layer.metadata)
            if info and info.get("stage") == COMPARE_STAGE and info.get("kind") == kind and info.get("image") == session.image_id and info.get("version") == label:
                layer.data = data
                if features is not None:
                    layer.features = features
                return layer
        kwargs = {"name": f"{kind} ({label})", "opacity": 0.6 if kind == "instances" else 0.5, "visible": visible, "metadata": {_layers.META_KEY: marker}}
        if features is not None:
            kwargs["features"] = features
        return self._viewer.add_labels(data, **kwargs)


__all__ = ["FinetuneWidget", "LossPlot"]
