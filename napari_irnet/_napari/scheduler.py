"""The IRNet panel's update scheduler: re-runs of the cheap stages, debounced, latest wins.

A slider change starts a short timer (:data:`DEBOUNCE_MS`); when the sliders
have been still that long, the stages the change touches re-run from the
image's stage cache in a background worker (:func:`~napari_irnet._napari.jobs.update_job`).
Requests that arrive meanwhile are merged into one (:meth:`Request.then`),
and a running re-run whose result no longer applies stops at its next stage.
Nothing starts while a Run of the networks is in progress; the waiting
request starts when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..params import Params
from .context import ImageSession, ViewerContext
from .jobs import UpdateResult, update_job
from .workers import start_worker, stop_worker

#: ms of quiet after the last slider change before the stages re-run
DEBOUNCE_MS = 25


@dataclass
class Request:
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

    def then(self, later: Request) -> Request:
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
        return Request(
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


class UpdateScheduler:
    """Runs the requested re-runs one at a time, the latest winning.

    ``params()`` gives the parameters the sliders show for the current
    image; ``blocked()`` is true while a Run of the networks is in progress;
    ``apply(session, result, request, before, after)`` shows a re-run's
    stages (``before``/``after``: the undo step's snapshots); ``failed(exc)``
    reports an error.
    """

    def __init__(
        self,
        parent,
        context: ViewerContext,
        params: Callable[[], Params],
        blocked: Callable[[], bool],
        apply: Callable[..., None],
        failed: Callable[[Exception], None],
    ) -> None:
        self._context = context
        self._params = params
        self._blocked = blocked
        self._apply = apply
        self._failed = failed
        self.worker = None
        self.running: Request | None = None
        self.pending: Request | None = None
        self.generation = 0
        self.closed = False
        self._debounce = QTimer(parent)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_debounce)

    @property
    def idle(self) -> bool:
        """No re-run runs, waits, or is about to be asked for."""
        return self.worker is None and self.pending is None and (self.closed or not self._debounce.isActive())

    def slider_moved(self) -> None:
        """A slider changed: re-run once they have been still for :data:`DEBOUNCE_MS`."""
        if self._context.current is not None and not self.closed:
            self._debounce.start()

    def _on_debounce(self) -> None:
        session = self._context.current
        if session is None or self.closed:
            return
        target = session.params
        if self.running is not None:
            target = self.running.params
        if self.pending is not None:
            target = self.pending.params
        params = self._params()
        if params != target:
            self.request(Request(params, session=session))

    def request(self, request: Request) -> None:
        """Queue a re-run of the cheap stages; a running one that is now stale stops early."""
        request.session = request.session or self._context.current
        running = self.running
        if running is not None and self.worker is not None:
            if not running.applied:
                # the running request's result will be dropped: fold it into this one
                request = running.then(request)
            self.running = None
        self.pending = request if self.pending is None else self.pending.then(request)
        self.start()

    def drop(self) -> None:
        """Forget re-runs waiting or running (their results no longer apply)."""
        self.generation += 1
        self.pending = None
        self.running = None
        if not self.closed:
            self._debounce.stop()

    def run_begins(self) -> None:
        """A Run of the networks begins: results of older re-runs no longer apply, none waits."""
        self.generation += 1
        self.pending = None

    def start(self) -> None:
        """Start the waiting request unless a job runs (it starts when that one finishes)."""
        if self.closed or self.pending is None or self.worker is not None or self._blocked():
            return
        request, self.pending = self.pending, None
        session = request.session or self._context.current
        if session is None or self._context.session(session.image_id) is not session:
            return
        request.params = self._params() if session is self._context.current else request.params
        request.session = session
        request.cache = session.result.cache
        self.running = request
        self.generation += 1
        self.worker = start_worker(
            update_job,
            session.result.cache,
            request.params,
            request.centre_points,
            request.reset_points,
            self.generation,
            self._is_current,
            _connect={"yielded": self._on_result, "returned": self._on_result, "errored": self._on_error, "finished": self._on_finished},
        )

    def _is_current(self, generation: int) -> bool:
        """Polled by the worker between stages: False once a newer request waits (or the panel is gone)."""
        return not self.closed and generation == self.generation and self.pending is None

    def _on_result(self, result: UpdateResult | None) -> None:
        """Instances first (yielded), then the semantic map (returned)."""
        request = self.running
        if self.closed or result is None or request is None or result.generation != self.generation:
            return
        if result.final:
            self.running = None
        session = request.session
        if session is None or session.result.cache is not request.cache or self._context.session(session.image_id) is not session:
            return  # a new run replaced the cache meanwhile, or the image is gone
        before = {"params": session.params, **request.before}
        session.params = result.params
        after = {**request.after, "params": result.params}
        if result.recomputed:
            self._apply(session, result, request, before, after)
        request.applied = True

    def _on_error(self, exc: Exception) -> None:
        self.running = None
        if not self.closed:
            self._failed(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self.running = None
        self.start()

    def close(self) -> None:
        """The panel is gone: the re-run in progress stops, none starts."""
        self.closed = True
        self.pending = None
        stop_worker(self.worker)
