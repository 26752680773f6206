"""Batch prediction over a project: every image that needs it, resumable.

::

    run = ProjectPrediction(project, device="cpu")
    print(len(run.names), "to predict")
    for event in run:          # one event per image, after its result is stored
        print(event.name, event.status)

Each image's result is committed (see :mod:`~napari_irnet.store.project`)
before the next one starts, so a run that is killed loses at most the image
it was working on, and the next run skips every image already done. An image
that cannot be read is recorded with its error and skipped; the run goes on.
A failed write (disk full, read-only folder) stops the run with an
:class:`~napari_irnet.io.files.OutputError`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io.files import InputError
from ..models.checkpoint import Model, load_checkpoint, model_fingerprint
from ..models.torch_files import CheckpointError
from ..params import Params
from .project import Project, ProjectError
from .revisions import semantic_for_project

__all__ = ["BatchEvent", "ProjectPrediction", "model_fingerprint", "predict_image"]


@dataclass
class BatchEvent:
    """What happened to one image of a batch run.

    ``status`` is ``"predicted"``, ``"failed"`` (``error`` says why; the
    image stays ``new``) or ``"skipped"`` (an annotator corrected or accepted
    it while the run was going).
    """

    name: str
    index: int
    total: int
    status: str
    instances: int = 0
    seconds: float = 0.0
    error: str | None = None


def predict_image(project: Project, model: Model, name: str, params: Params, device="auto"):
    """Predict one project image; returns (instances, records with class names, semantic, labels used)."""
    from ..pipeline.predict import predict, predict_classes

    image = project.read_image(name)
    labels = project.entry(name).labels
    names = labels if labels is not None else predict_classes(model, image, device=device)
    _, pred = predict(model, image, names, params, device, seeds=False)  # the project keeps no seeds
    records = [
        {"id": r["id"], "class": model.classes[r["class_id"]], "score": r["score"]} for r in pred.instances.records
    ]
    # the model's class order may differ from the project's
    semantic = semantic_for_project(pred.semantic, model.classes, project.classes)
    return pred.instances.labels, records, semantic, labels


class ProjectPrediction:
    """A batch prediction run over the images of a project that need it.

    Parameters
    ----------
    project
        The open project.
    model
        The model to use; default: the project's checkpoint (which must
        know every project class).
    checkpoint
        Use (and record in the project) this checkpoint instead.
    params
        Use (and record in the project) these parameters instead of the
        project's. Both are recorded only when the run starts and holds the
        project's lock: a run refused by the lock changes nothing.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    force
        Predict every ``new`` and ``proposed`` image, even up-to-date ones.
    limit
        Predict at most this many images.
    names
        Only consider these images.

    Attributes
    ----------
    names : list of str
        The images this run will predict, in order.
    model_key : str
        The key results are stored with (see :meth:`Project.model_key`).
    """

    def __init__(
        self,
        project: Project,
        model: Model | None = None,
        *,
        checkpoint=None,
        params: Params | None = None,
        device="auto",
        force: bool = False,
        limit: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        self.project = project
        self.device = device
        given_in_memory = model is not None and checkpoint is None
        if checkpoint is not None:
            model = load_checkpoint(checkpoint, classes=project.classes)
            model.require("cam", "irn")  # before the project points at it
        if model is None:
            path = project.checkpoint_path
            if path is None:
                raise ProjectError(f"{project.root}: no checkpoint set; give one (predict --checkpoint PATH)")
            model = load_checkpoint(path, classes=project.classes)
        else:
            unknown = [c for c in project.classes if c not in model.classes]
            if unknown:
                raise CheckpointError(f"the model was trained for classes {model.classes}, which lack {unknown}")
        where = checkpoint if checkpoint is not None else project.checkpoint_path
        model.require("cam", "irn")
        if params is not None:
            params.validate()
        self.model = model
        #: the checkpoint and parameters to record in the project; written only once the run holds
        #: the project's lock, so a run that is refused changes nothing
        self._new_checkpoint = checkpoint
        self._new_params = params if params is not None and params != project.params else None
        self.params = params if params is not None else project.params
        #: the checkpoint file the results come from (None for a model given in memory)
        self.checkpoint_path = None if given_in_memory else Path(where).resolve()
        if given_in_memory:  # it may differ from the project's checkpoint file
            self.model_key = project.model_key(params=self.params, fingerprint=model_fingerprint(model))
        else:
            self.model_key = project.model_key(checkpoint=where, params=self.params)
        states = project.states()
        wanted = list(names) if names is not None else project.names
        chosen = []
        for name in wanted:
            st = states[name]
            if st.state in ("new", "proposed") and (force or project.needs_prediction(name, self.model_key, st)):
                chosen.append(name)
        #: how many images need prediction (before ``limit``)
        self.needed = len(chosen)
        self.names = chosen[:limit] if limit is not None else chosen

    def _record_settings(self) -> None:
        """Save the run's checkpoint and parameters in the project (under its lock)."""
        if self._new_checkpoint is not None:
            self.project.set_checkpoint(self._new_checkpoint)
        if self._new_params is not None:
            self.project.set_params(self._new_params)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[BatchEvent]:
        total = len(self.names)
        with self.project.batch_lock():
            self._record_settings()
            for index, name in enumerate(self.names):
                start = time.perf_counter()
                try:
                    instances, records, semantic, labels = predict_image(
                        self.project, self.model, name, self.params, self.device
                    )
                except InputError as exc:
                    self.project.record_error(name, str(exc))
                    yield BatchEvent(name, index, total, "failed", seconds=time.perf_counter() - start, error=str(exc))
                    continue
                stored = self.project.save_result(name, instances, records, semantic, self.model_key, labels)
                status = "predicted" if stored else "skipped"
                del instances, semantic
                if index % 50 == 49:
                    gc.collect()
                yield BatchEvent(name, index, total, status, len(records), time.perf_counter() - start)
