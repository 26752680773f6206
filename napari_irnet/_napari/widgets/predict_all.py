"""The Project panel's Predict all: the command line's ``predict --project`` in a worker, with progress and Stop."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import ProgressBar, PushButton
from napari.utils.notifications import show_error

from ..project_jobs import predict_all_job
from ..workers import start_worker
from . import Section, row


class PredictAll(Section):
    """Predict all / Stop and a progress bar.

    ``predicted(name)``: an image got a new proposal; ``status(text)``:
    what happens; ``finished()``: the run ended (done, stopped or failed).
    """

    def __init__(self, predicted: Callable[[str], None], status: Callable[[str], None], finished: Callable[[], None]) -> None:
        super().__init__()
        self._predicted, self._status, self._finished = predicted, status, finished
        self.worker = None
        self._stop = False
        self.closed = False
        self.predict_button = PushButton(text="Predict all", name="predict_button")
        self.predict_button.tooltip = "Propose masks for every image that needs them (new, or made by another model), in the background"
        self.stop_button = PushButton(text="Stop", name="stop_button", enabled=False, tooltip="Stop after the image in progress")
        self.progress = ProgressBar(name="progress", min=0, max=1, value=0, visible=False)
        self.extend([row(self.predict_button, self.stop_button), self.progress])
        self.stop_button.changed.connect(self.stop)

    def start(self, project, device: str) -> None:
        """Propose masks for every image of ``project`` that needs them, in the background."""
        if self.worker is not None:
            return
        self._stop = False
        self.worker = start_worker(
            predict_all_job,
            project,
            device,
            lambda: self._stop,
            _connect={"yielded": self._on_predicted, "errored": self._on_error, "finished": self._on_finished},
        )
        self.progress.visible, self.progress.value = True, 0
        self._status("predicting: loading the checkpoint …")

    def stop(self, *_) -> None:
        """Stop after the image in progress (its result is kept)."""
        if self.worker is not None:
            self._stop = True
            self._status("stopping after the image in progress …")

    def enable(self, has_project: bool) -> None:
        self.predict_button.enabled = has_project and self.worker is None
        self.stop_button.enabled = self.worker is not None

    def _on_predicted(self, item) -> None:
        if self.closed:
            return
        if isinstance(item, int):
            self.progress.max = max(1, item)
            self._status(f"predicting {item} image(s)" if item else "every image has an up-to-date proposal already")
            return
        self.progress.value = item.index + 1
        if item.status == "predicted":
            self._predicted(item.name)
        what = f"{item.instances} instances" if item.error is None else item.error
        self._status(f"{item.index + 1}/{item.total}: {item.name} {item.status} ({what}, {item.seconds:.1f} s)")

    def _on_error(self, exc: Exception) -> None:
        if self.closed:
            return
        self._status(f"Predict all failed: {exc}")
        show_error(f"napari-irnet: Predict all failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        if self.closed:
            return
        self.progress.visible = False
        self._finished()

    def close(self) -> None:
        """The panel is gone: the run stops after the image in progress."""
        self.closed = True
        self._stop = True
