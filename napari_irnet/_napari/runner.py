"""The IRNet panel's Run: both networks once on the chosen image in a worker, then the image's session.

A Run reads the input box (image, checkpoint, classes, device), runs
:func:`~napari_irnet._napari.jobs.run_job` in a background worker with a
progress bar and Cancel, and tells the viewer context when it starts and
ends (another panel hands over what it holds of the image). Its result
starts the image's :class:`~napari_irnet._napari.context.ImageSession` (the
stored corrections win over the proposal; in a project the proposal is
stored as the image's result) or re-runs the session the image has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from ..annotation.session import AnnotationSession
from ..progress import Step
from ..store.fingerprints import image_fingerprint
from ..store.project import ProjectError
from . import layers
from .context import ImageSession, ViewerContext
from .jobs import RUN_STEPS, RunResult, run_job
from .layer_sync import LayerSync
from .recent import remember_checkpoint
from .scheduler import UpdateScheduler
from .stores import store_for_layer
from .widgets.input_box import InputBox
from .workers import start_worker, stop_worker

#: a walk's progress is drawn at most this often (seconds): every redraw of a panel redraws the
#: whole window where OpenGL is software (see :class:`~napari_irnet._napari.widgets.status.StatusBox`)
BAR_SECONDS = 0.25


@dataclass
class RunHooks:
    """What the panel does around a Run."""

    status: Callable[[str], None]  # show a status line
    progress: Callable[[int, int], None]  # show (done, total) on the panel's bar; total 0 hides it
    refresh: Callable[[], None]  # update the controls
    live_values: Callable[[], dict[str, Any]]  # the sliders' values by Params field
    watch: Callable[[ImageSession], None]  # a new session: listen to its annotation
    drop: Callable[[str], None]  # forget an image's session
    rerun: Callable[[ImageSession, RunResult], None]  # show a re-run's stages (an update of every stage)
    shown: Callable[[ImageSession, RunResult], None]  # the result is shown


class Runner:
    """Runs the networks on the chosen image; the result becomes the image's session."""

    def __init__(self, viewer, context: ViewerContext, inputs: InputBox, layers: LayerSync, scheduler: UpdateScheduler, hooks: RunHooks) -> None:
        self._viewer = viewer
        self._context = context
        self._inputs = inputs
        self._layers = layers
        self._scheduler = scheduler
        self._hooks = hooks
        self.worker = None
        self._steps: int | None = None  # the Run's steps shown, None between Runs
        self._shown_at = 0.0  # when a walk step was last shown on the bar
        self._image: tuple | None = None  # (layer, image id, image) of the run in progress
        self._ok = False
        self._ran = None  # (layer, image id, image) of a run whose end the other panels are yet to hear of
        self.closed = False

    def run(self, *_) -> None:
        """Run the networks on the chosen image in a background worker."""
        if self.worker is not None:
            show_info("napari-irnet: a run is already in progress")
            return
        layer, checkpoint = self._inputs.image.value, self._inputs.checkpoint.value
        if layer is None:
            show_warning("napari-irnet: choose an image layer first")
            return
        if not checkpoint:
            show_warning("napari-irnet: choose a checkpoint first (Browse…)")
            return
        try:
            image = self._inputs.network_input(layer)
        except ValueError as exc:
            show_error(f"napari-irnet: {layer.name}: {exc}")
            return
        image_id = layers.image_id_of(layer)
        classes = list(self._inputs.classes.value) or layers.image_labels_of(layer, self._inputs.known_classes())
        session = self._context.session(image_id)
        points = session.points if session is not None and session.points_edited else None
        self._image, self._ok = (layer, image_id, image), False
        self._scheduler.run_begins()  # results of older updates no longer apply
        self._steps, self._shown_at = 0, 0.0
        self._hooks.progress(0, RUN_STEPS)
        self.worker = start_worker(
            run_job,
            checkpoint,
            image,
            classes,
            None,  # the checkpoint's parameters ...
            self._inputs.device.value,
            points,
            self._hooks.live_values(),  # ... with the sliders' values
            _connect={
                "yielded": self._on_step,
                "returned": self._on_returned,
                "errored": self._on_error,
                "aborted": lambda: self._hooks.status("run cancelled"),
                "finished": self._on_finished,
            },
        )
        self._hooks.refresh()
        self._hooks.status("starting …")
        self._context.start_run(image_id, layer)

    def _on_step(self, item) -> None:
        """A step of the run: its description, or a post-processing :class:`Step` (stage, walk step)."""
        if self._steps is None or self.closed:
            return
        # the status first: drawing the bar may process events (a later error's status must win)
        if isinstance(item, Step):
            if item.total:  # a walk: the bar follows its steps, redrawn at most every BAR_SECONDS
                if item.done == item.total or item.done % 32 == 0:
                    self._hooks.status(f"{item.stage}: step {item.done} of {item.total}")
                now = time.monotonic()
                if item.done == item.total or now - self._shown_at >= BAR_SECONDS:
                    self._shown_at = now
                    self._hooks.progress(item.done, item.total)
            else:
                self._hooks.status(f"post-processing: {item.stage} done")
            return
        self._hooks.status(item)
        self._steps = min(self._steps + 1, RUN_STEPS)
        self._hooks.progress(self._steps, RUN_STEPS)

    def cancel(self, *_) -> None:
        """Stop the run at its next step."""
        if self.worker is not None:
            self.worker.quit()
            self._hooks.status("cancelling …")

    def _on_error(self, exc: Exception) -> None:
        if self.closed:
            return
        self._hooks.status(f"run failed: {exc}")
        show_error(f"napari-irnet: run failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._steps = None
        if not self.closed:
            self._hooks.progress(0, 0)
        self._ran, self._image = self._image, None
        if self._layers.busy:  # the new session's layers are still being added: the run ends after the last
            return
        self._end_run()
        if self.closed:
            return
        self._hooks.refresh()
        self._scheduler.start()  # a re-run asked for meanwhile

    def _end_run(self) -> None:
        """Tell the other panels that the run ended (its layers shown, or it failed or was cancelled)."""
        ran, self._ran = self._ran, None
        if ran is not None:
            self._context.end_run(ran[1], ran[0], self._ok)

    def _on_returned(self, result: RunResult) -> None:
        if self.closed or self._image is None:
            return
        layer, image_id, image = self._image
        if layer not in self._viewer.layers:
            return  # the image was closed while its networks ran
        self._inputs.device_in_use.value = result.device
        remember_checkpoint(result.checkpoint)
        self._inputs.checkpoint.reset_choices()
        session = self._context.session(image_id)
        if session is not None and session.image.shape != image.shape:
            self._hooks.drop(image_id)
            session = None
        if session is None:
            # its layers are added one per turn of the event loop: shown (and the run ended) after the last
            session = self._start_session(layer, image_id, image, result)
        else:
            self._rerun_session(session, result)
            self._hooks.shown(session, result)
        if session is not None:
            self._ok = True

    def _start_session(self, layer, image_id: str, image: np.ndarray, result: RunResult) -> ImageSession | None:
        pred = result.prediction
        annotation = AnnotationSession.from_prediction(pred, result.model.classes, result.classes)
        fingerprint = image_fingerprint(np.asarray(layer.data))
        try:
            store = store_for_layer(layer, image, fingerprint, projects=self._context.project_at)
        except ProjectError as exc:
            show_error(f"napari-irnet: {exc}")
            return None
        session = ImageSession(
            image_id=image_id, image_name=layer.name, image=image, store=store, result=result, annotation=annotation,
            params=result.cache.params, points=np.asarray(pred.centre_points, dtype=np.float64), prediction=pred,
            fingerprint=fingerprint,
        )  # fmt: skip
        kind, message = session.load_stored()
        if kind:
            (show_info if kind == "info" else show_warning)(f"napari-irnet: {message}")
        self._hooks.watch(session)
        self._context.add(session)
        self._context.current = session
        self._store_proposal(session)
        self._layers.show_all_stages(session, then=lambda: self._shown(session, result))
        return session

    def _shown(self, session: ImageSession, result: RunResult) -> None:
        """Every layer of a new session is there: the panel shows the result, the run ends for the other panels."""
        if self.closed:
            return
        self._hooks.shown(session, result)
        if self.worker is None and self._image is None:  # the worker has finished (its end waited for the layers)
            self._end_run()
            self._hooks.refresh()
            self._scheduler.start()  # a re-run asked for meanwhile

    def _store_proposal(self, session: ImageSession) -> None:
        error = session.store_proposal()
        if error:
            show_warning(f"napari-irnet: {error}")

    def _rerun_session(self, session: ImageSession, result: RunResult) -> None:
        session.result = result
        self._hooks.rerun(session, result)
        self._store_proposal(session)
        self._layers.put_static_stages(session)
        self._context.current = session

    def close(self) -> None:
        """The panel is gone: the run stops at its next step, its result is dropped."""
        self.closed = True
        stop_worker(self.worker)
        self._end_run()  # a run whose layers were still being added: the other panels hear that it ended
