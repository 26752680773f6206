"""The Fine-tune panel's comparison: the current image run with another version, beside its instances.

Runs :func:`~napari_irnet._napari.jobs.run_job` with the chosen version on
the viewer context's current image, and adds ``instances (vN)`` and
``semantic (vN)`` beside the IRNet panel's layers (and the old model's
proposal, when the shown instances are corrections). The layers carry the
:data:`COMPARE_STAGE` marker, a stage the IRNet panel never looks for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_error

from ..annotation.masks import features_table, table_from_records
from . import layers
from .context import ImageSession
from .finetune_jobs import version_label
from .jobs import RUN_STEPS, RunResult, run_job
from .workers import start_worker

#: metadata marker of the comparison layers (a stage the IRNet panel never looks for)
COMPARE_STAGE = "compare"


class Comparison:
    """Runs an image with a version in a worker and shows the result as layers.

    ``status(text)`` says what happens; ``finished()`` is called when the run ended.
    """

    def __init__(self, viewer, status: Callable[[str], None], finished: Callable[[], None]) -> None:
        self._viewer, self._status, self._finished = viewer, status, finished
        self.worker = None
        self._args: tuple[ImageSession, str] | None = None
        self.closed = False

    def start(self, session: ImageSession, path: str, device: str) -> None:
        """Run ``session``'s image with the checkpoint ``path`` (as it ran: its classes and parameters)."""
        if self.worker is not None:
            return
        self._args = (session, path)
        self.worker = start_worker(
            run_job,
            path,
            session.image,
            session.classes,
            session.params,
            device,
            _progress={"total": RUN_STEPS, "desc": "napari-irnet compare"},
            _connect={
                "yielded": lambda text: self._status(f"compare: {text}"),
                "returned": self._on_returned,
                "errored": lambda exc: (self._status(f"compare failed: {exc}"), show_error(f"napari-irnet: compare failed: {exc}")),
                "finished": self._on_finished,
            },
        )

    def _on_finished(self) -> None:
        self.worker = None
        self._args = None
        if not self.closed:
            self._finished()

    def _on_returned(self, result: RunResult) -> None:
        if self.closed:
            return
        session, path = self._args
        classes = list(result.model.classes)
        new_label = version_label(path)
        inst = result.prediction.instances
        table = table_from_records(inst.records, classes)
        self._put(session, new_label, "instances", inst.labels.astype(np.int32), features_table(inst.labels, table), classes)
        self._put(session, new_label, "semantic", result.prediction.semantic, None, classes, visible=False)
        old_label = version_label(session.result.checkpoint)
        old = session.prediction or session.result.prediction
        n_old = None
        if old is not None and old_label != new_label:
            old_labels = old.instances.labels
            n_old = len(np.unique(old_labels)) - 1
            if not np.array_equal(old_labels, session.labels):  # the shown instances are corrections
                old_table = table_from_records(old.instances.records, list(session.result.model.classes))
                self._put(session, old_label, "instances", old_labels.astype(np.int32), features_table(old_labels, old_table), classes)
        n_new = len(np.unique(inst.labels)) - 1
        was = f" ({old_label}: {n_old})" if n_old is not None else ""
        self._status(f"{session.image_name}: {new_label} finds {n_new} instances{was}; see 'instances ({new_label})'")

    def _put(self, session: ImageSession, label: str, kind: str, data: np.ndarray, features, classes, visible: bool = True):
        """Add or update the comparison layer ``<kind> (<label>)`` of the session's image."""
        marker = {"stage": COMPARE_STAGE, "kind": kind, "image": session.image_id, "version": label, "classes": list(classes)}
        for layer in self._viewer.layers:
            info = layers.stage_of(layer.metadata)
            if info and info.get("stage") == COMPARE_STAGE and info.get("kind") == kind and info.get("image") == session.image_id and info.get("version") == label:
                layer.data = data
                if features is not None:
                    layer.features = features
                return layer
        kwargs = {"name": f"{kind} ({label})", "opacity": 0.6 if kind == "instances" else 0.5, "visible": visible, "metadata": {layers.META_KEY: marker}}
        if features is not None:
            kwargs["features"] = features
        return self._viewer.add_labels(data, **kwargs)
