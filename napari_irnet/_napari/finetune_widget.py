"""The Fine-tune dock widget: train IRNet further from the images a person corrected.

Plugins ▸ napari-irnet ▸ Fine-tune IRNet. The widget holds no algorithm: the
images are gathered and trained on in :mod:`napari_irnet._napari.finetune_jobs`
(a background worker), which calls :mod:`napari_irnet.training.finetune`. It
assembles the images (:mod:`~napari_irnet._napari.widgets.training_images`),
the settings (:mod:`~napari_irnet._napari.widgets.training_settings`), the
loss plot and the versions (:mod:`~napari_irnet._napari.widgets.versions`,
:mod:`~napari_irnet._napari.finetune_compare`), and shares the checkpoint and
the current image with the IRNet panel through the viewer's
:class:`~napari_irnet._napari.context.ViewerContext`.

- Images: the image layers open in the viewer whose stored corrections (kept
  by the IRNet panel) are *corrected* or *accepted*, and optionally a folder
  of images with a labels file, as for ``napari-irnet finetune``.
- Start runs the training; Stop ends it at the next step. A stopped run makes
  no new version (the checkpoint it started from is never written); its state
  is kept next to the versions, so Start with the same images and settings
  continues where it stopped.
- A finished run is saved as a new version (``<checkpoint>.versions/v0001.pt``,
  ...), which becomes the context's checkpoint: the IRNet panel then uses it
  for the next image. Any version (or the original) can be taken back with
  "Use this version".
- "Compare on image" runs the IRNet panel's current image with the
  chosen version and adds ``instances (v1)`` / ``semantic (v1)`` beside the
  panel's ``instances`` (and the old model's proposal when the shown
  instances are corrections).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from ..io.files import InputError
from .context import ViewerContext
from .finetune_compare import COMPARE_STAGE, Comparison
from .finetune_jobs import PANEL_TRAIN_PARAMS, FinetuneResult, TrainingImage, finetune_job, version_choices, version_label
from .jobs import load_model
from .widgets import Section, holder, row
from .widgets.loss_plot import LossPlot
from .widgets.training_images import TrainingImages
from .widgets.training_settings import TrainingSettings
from .widgets.versions import VersionsBox
from .workers import start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: ms of quiet after layer changes before the image list is refreshed
REFRESH_MS = 300


class FinetuneWidget(Container):
    """Dock widget: images, epochs, learning rate, device; Start/Stop; loss; versions; compare."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True, labels=False)
        self._viewer = napari_viewer
        self.context = ViewerContext.of(napari_viewer)
        self._worker = None
        self._stop_requested = False
        self._load_worker = None
        #: the last finished or stopped run
        self.last_result: FinetuneResult | None = None
        self._closed = False  # the Qt widget is gone (viewer closed): workers' late results are dropped
        self._build()
        self.comparison = Comparison(napari_viewer, self._set_status, self._refresh_controls)
        self._refresh_timer = QTimer(self.native)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh_images)
        self._connect()
        self.take_panel_checkpoint()
        self.refresh_images()
        self._refresh_controls()

    def _build(self) -> None:
        self.checkpoint = FileEdit(label="start from", name="checkpoint", mode="r", filter="Checkpoints (*.pt *.pth)", value=None, nullable=True)
        self.checkpoint.tooltip = "The checkpoint to fine-tune (never written); empty: the IRNet panel's"
        self.from_panel_button = PushButton(text="From IRNet panel", name="from_panel_button")
        model = Section("Images and model", labels=True)
        model.append(Container(widgets=[self.checkpoint, self.from_panel_button], layout="horizontal", labels=False, label="start from"))
        self.training_images = TrainingImages(self._viewer, self.context)
        self.training = TrainingSettings()
        self.start_button = PushButton(text="Start", name="start_button")
        self.stop_button = PushButton(text="Stop", name="stop_button", enabled=False)
        self.stop_button.tooltip = "End at the next step without a new version (Start again with the same images and settings continues)"
        self.progress = ProgressBar(label="progress", name="progress", min=0, max=1, value=0)
        self.status = Label(label="status", name="status", value="accept or correct images in the IRNet panel, then Start")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock
        self.loss_plot = LossPlot()
        run = Section(labels=True)
        run.extend([row(self.start_button, self.stop_button), self.progress, self.status, holder(self.loss_plot, "loss_plot", "loss")])
        self.version_box = VersionsBox(choices=self._version_choices)
        self.extend([model, self.training_images, self.training, run, self.version_box])
        # the controls by the names scripts and tests know (the TrainParams fields by their own names)
        self.images, self.versions, self.use_new = self.training_images.images, self.version_box.versions, self.version_box.use_new
        self.device, self.device_in_use = self.training.device, self.training.device_in_use
        for name in PANEL_TRAIN_PARAMS:
            setattr(self, name, self.training.controls[name])

    def _connect(self) -> None:
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.training_images.refresh_button.changed.connect(self.refresh_images)
        self.from_panel_button.changed.connect(self.take_panel_checkpoint)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.version_box.use_version_button.changed.connect(lambda *_: self.use_version())
        self.version_box.compare_button.changed.connect(self.compare)
        events = self._viewer.layers.events
        events.inserted.connect(self._schedule_refresh)
        events.removed.connect(self._schedule_refresh)
        self.native.destroyed.connect(self._on_destroyed)

    @property
    def native(self):
        """The scroll area around the controls, so napari docks a widget that scrolls (and stays narrow)."""
        return self.root_native_widget

    def _on_destroyed(self, *_) -> None:
        """The panel was closed: a running fine-tuning stops at its next step, late results are dropped."""
        self._closed = True
        self._stop_requested = True
        self._refresh_timer = None
        self.comparison.closed = True

    # ------------------------------------------------------------------ state
    @property
    def idle(self) -> bool:
        """True when nothing runs (tests wait for this)."""
        return self._worker is None and self.comparison.worker is None and self._load_worker is None

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
        return self.training.settings()

    def _refresh_controls(self) -> None:
        running = self._worker is not None
        self.start_button.enabled = not running
        self.stop_button.enabled = running and not self._stop_requested
        self.version_box.enable(running, self.comparison.worker is not None)
        for w in (self.checkpoint, self.from_panel_button):
            w.enabled = not running
        self.training_images.enable(not running)
        self.training.enable(not running)

    # ------------------------------------------------------------------ checkpoint and versions
    def take_panel_checkpoint(self, *_) -> None:
        """Fine-tune the checkpoint the IRNet panel uses (the viewer context's)."""
        path = self.context.checkpoint or None
        if path and str(path) != self._checkpoint_path():
            self.checkpoint.value = path

    def set_checkpoint(self, path: str | Path) -> None:
        """Fine-tune ``path`` from now on."""
        self.checkpoint.value = Path(path).expanduser()

    def _on_checkpoint_changed(self, *_) -> None:
        path = self._checkpoint_path()
        self.version_box.show_versions(path)
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
        if self._closed or path != self._checkpoint_path():
            return
        self.training.show(model.train_params)
        if "irn" in model.untrained_networks():
            self._set_status(f"{Path(path).name} has no trained IRNet yet: train it first (napari-irnet train-irn)")

    def _version_choices(self) -> list[tuple[str, str]]:
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

    def compare(self, *_) -> None:
        """Run the IRNet panel's current image with the chosen version; add its result as layers."""
        if self.comparison.worker is not None:
            return
        path = str(self.versions.value or "")
        session = self.context.current
        if not path:
            show_warning("napari-irnet: no version to compare")
            return
        if session is None:
            show_warning("napari-irnet: run the IRNet panel on an image first")
            return
        self.comparison.start(session, path, self.device.value)
        self._refresh_controls()

    # ------------------------------------------------------------------ images
    def _schedule_refresh(self, *_) -> None:
        if not self._closed:
            self._refresh_timer.start()

    def refresh_images(self, *_) -> list[str]:
        """Look for image layers with corrected or accepted corrections; returns their names.

        Newly found images are selected; the selection of the others stays.
        """
        return self.training_images.refresh()

    def selected_images(self) -> list[TrainingImage]:
        return self.training_images.selected()

    # ------------------------------------------------------------------ run
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
            folder = self.training_images.folder_source()
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
            _connect={"yielded": self._on_yielded, "returned": self._on_returned, "errored": self._on_error, "finished": self._on_finished},
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


__all__ = ["COMPARE_STAGE", "FinetuneWidget", "LossPlot"]
