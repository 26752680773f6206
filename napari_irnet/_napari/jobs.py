"""The plugin's background jobs as plain functions and generators.

They call the core and nothing else: no napari, no Qt. The widget wraps them
with ``napari.qt.threading.create_worker`` at the GUI edge; tests and scripts
can call them directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .llvm_guard import avoid_llvm_clash

avoid_llvm_clash()  # before anything imports torchvision (see _llvm_guard)
import torchvision  # noqa: E402,F401  (imported once here, not first inside a worker thread)

from ..io.images import DEFAULT_MAX_PIXELS, check_pixels  # noqa: E402
from ..models.checkpoint import Model, load_checkpoint  # noqa: E402
from ..params import Params  # noqa: E402
from ..pipeline.cache import StageCache  # noqa: E402
from ..pipeline.inference import NetworkOutputs, resolve_device  # noqa: E402
from ..pipeline.predict import predict_classes, run_networks  # noqa: E402
from ..pipeline.stages import Prediction  # noqa: E402

#: steps :func:`run_job` yields (for a progress bar)
RUN_STEPS = 4

_model_cache: dict[tuple[str, float, int], Model] = {}


def load_model(path: str | os.PathLike[str]) -> Model:
    """Load a checkpoint, reusing the last load of the same unchanged file."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _model_cache:
        return _model_cache[key]
    model = load_checkpoint(p)
    if key is not None:
        _model_cache.clear()  # keep one model in memory
        _model_cache[key] = model
    return model


@dataclass
class RunResult:
    """What one run of the networks gives the widget."""

    model: Model
    checkpoint: str
    classes: list[str]
    outputs: NetworkOutputs
    cache: StageCache
    prediction: Prediction
    device: str


def run_job(
    checkpoint: str | os.PathLike[str],
    image: np.ndarray,
    classes: Sequence[str],
    params: Params | None = None,
    device: str = "auto",
    centre_points: np.ndarray | None = None,
    live: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[str]:
    """Load the model, run both networks once, then every cheap stage.

    Yields a short description before each of :data:`RUN_STEPS` steps, then
    a :class:`~napari_irnet.progress.Step` after every stage and walk
    step of the post-processing (the widget advances its progress bar, and a
    Cancel takes effect at the next yield, also inside a long walk);
    returns a :class:`RunResult`. Without ``classes`` the classifier picks
    the image's classes. ``params`` defaults to the checkpoint's, with the
    fields in ``live`` (the widget's sliders) replaced.
    """
    check_pixels("the image", image.shape[:2], max_pixels, hint="use a crop of it")
    yield "loading checkpoint"
    model = load_model(checkpoint)
    params = (params or model.params).replace(**(live or {}))
    dev = resolve_device(device)
    classes = list(classes)
    if not classes:
        yield "finding the image's classes"
        classes = predict_classes(model, image, device=dev)
        if not classes:
            raise ValueError("the classifier finds none of its classes in this image: choose the image's classes")
    else:
        yield "classes given"
    yield "CAM + IRNet"
    outputs = run_networks(model, image, model.class_ids(classes), params, dev)
    yield "post-processing"
    cache = StageCache(outputs, params, image, dev)
    prediction = yield from cache.iter_update(centre_points=centre_points)  # a Step per stage and walk step
    return RunResult(model, str(checkpoint), classes, outputs, cache, prediction, str(dev))


@dataclass
class UpdateResult:
    """The stages re-run by :func:`update_job`."""

    prediction: Prediction
    recomputed: list[str]
    params: Params
    generation: int
    #: False for the first result of a re-run (instances; the semantic walk still to come)
    final: bool = True


def update_job(
    cache: StageCache,
    params: Params,
    centre_points: np.ndarray | None,
    reset_points: bool,
    generation: int,
    is_current: Callable[[int], bool],
) -> Iterator[UpdateResult]:
    """Re-run only the stages a parameter change or a centroid edit touches.

    Yields the instances as soon as they are ready (without the semantic
    walk), then returns the result with the semantic map. ``is_current``
    is polled between stages; once it returns False (a newer request
    exists) the job stops early and returns None ("latest wins"; stages
    already computed stay cached for the next request).
    """
    if reset_points:
        cache.reset_points()
    stop = lambda: not is_current(generation)  # noqa: E731
    try:
        first = cache.update(params, centre_points=centre_points, should_stop=stop, with_semantic=False)
        done = list(cache.last_recomputed)
        if done:
            yield UpdateResult(first, done, params, generation, final=False)
        if stop():
            return None
        full = cache.update(should_stop=stop)
    except InterruptedError:
        return None
    return UpdateResult(full, list(cache.last_recomputed), params, generation)
