"""The IRNet panel's undo and redo, and the edits that re-run stages: moved or reset centroids.

Undo and redo step through the image's
:class:`~napari_irnet.annotation.session.AnnotationSession` history (edits,
brush strokes, parameter changes, re-runs). A step's snapshots also hold the
centroid points and the parameters in force, which are put back here; the
stage cache is then brought back to that state by a re-run that keeps the
instances as restored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.utils.notifications import show_info

from ..params import Params
from .context import ImageSession, ViewerContext
from .layer_sync import LayerSync
from .scheduler import Request, UpdateScheduler


class EditHistory:
    """Undo, redo and centroid edits of the context's current image.

    ``params()`` gives the parameters the sliders show; ``show_params(params)``
    puts restored parameters on the sliders; ``after_edit(session, what)``
    saves and tells what happened (:meth:`EditActions.after_edit`).
    """

    def __init__(
        self,
        context: ViewerContext,
        layers: LayerSync,
        scheduler: UpdateScheduler,
        params: Callable[[], Params],
        show_params: Callable[[Params], None],
        after_edit: Callable[..., None],
    ) -> None:
        self._context = context
        self._layers = layers
        self._scheduler = scheduler
        self._params = params
        self._show_params = show_params
        self._after_edit = after_edit
        self.closed = False

    def actions(self) -> dict[str, Callable[[], Any]]:
        return {"undo": self.undo, "redo": self.redo}

    # ------------------------------------------------------------------ undo / redo
    def undo(self, *_) -> None:
        """Undo the last edit, paint stroke or parameter change of this image."""
        self._step(undo=True)

    def redo(self, *_) -> None:
        self._step(undo=False)

    def _step(self, undo: bool) -> None:
        session = self._context.current
        if session is None:
            return
        self._scheduler.drop()  # a re-run waiting would apply on top of the state being restored
        params_before = session.params
        record = session.annotation.undo() if undo else session.annotation.redo()
        if record is None:
            show_info(f"napari-irnet: nothing to {'undo' if undo else 'redo'}")
            return
        snap = record.before if undo else record.after
        self._restore(session, snap)
        if session.params != params_before or "points" in snap:
            self._resync_cache(session, snap)
        self._after_edit(session, f"{'undid' if undo else 'redid'}: {record.name}")

    def _restore(self, session: ImageSession, snap: dict[str, Any]) -> None:
        """Centroid points and parameters of an undone or redone step (the annotation restores the rest)."""
        if session.restore_points(snap):
            layer = self._layers.find(session, "centroids")
            if layer is not None:
                with self._layers.writing():
                    layer.data = session.points
        if "params" in snap and snap["params"] != session.params:
            session.params = snap["params"]
            self._show_params(session.params)
        self._layers.refresh_features(session)

    def _resync_cache(self, session: ImageSession, snap: dict[str, Any]) -> None:
        """Bring the cache (seeds, semantic, clusters) back to a restored state; the instances stay."""
        req = Request(session.params, keep_instances=True, session=session)
        if "points" in snap:
            pts, edited = snap["points"]
            req.centre_points = np.asarray(pts) if edited else None
            req.reset_points = not edited
        self._scheduler.request(req)

    # ------------------------------------------------------------------ centroids
    def on_points_changed(self, event) -> None:
        """The centroids layer was edited (points added, removed, moved)."""
        session = self._context.current
        if self._layers.applying or session is None or self.closed:
            return
        action = str(getattr(event, "action", "changed"))
        if not action.endswith(("added", "removed", "changed")):
            return
        new = self._layers.points_of(session)
        if new is None or (new.shape == session.points.shape and np.allclose(new, session.points)):
            return
        self.move_centroids(new)

    def move_centroids(self, points: np.ndarray) -> None:
        """Use these instance centres (y, x in pixels): the instances re-cluster and re-propagate."""
        session = self._context.current
        if session is None:
            return
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        before = {"points": (session.points, session.points_edited)}
        session.points, session.points_edited = points, True
        after = {"points": (points, True)}
        self._layers.set_points(session)
        self._scheduler.request(Request(self._params(), centre_points=points, name="edit centroids", kind="edit", before=before, after=after, session=session))

    def reset_centroids(self, *_) -> None:
        """Forget edited centroids: the clusters come from the displacement field again."""
        session = self._context.current
        if session is None or not session.points_edited:
            return
        before = {"points": (session.points, True)}
        session.points_edited = False
        self._scheduler.request(Request(self._params(), reset_points=True, name="reset centroids", kind="edit", before=before, after={}, session=session))
