"""The stage cache: re-run only what a parameter change or an edit touches.

A :class:`StageCache` holds one image's network outputs (computed once) and
the result of every cheap stage below them (see DESIGN.md, "Stages, and
what is cached"). :meth:`StageCache.update` takes new parameters, or edited
centroids, and recomputes the stages whose inputs changed, reusing the
rest::

    cache = StageCache(outputs, params, image)
    prediction = cache.update()                                  # everything
    prediction = cache.update(params.replace(instance_bg_threshold=0.4))  # argmax reused
    prediction = cache.update(centre_points=moved_points)        # walk re-runs

The stages and the parameters each depends on:

========================  ==================================================
stage                     inputs
========================  ==================================================
seeds                     seed_fg_threshold, seed_class_thresholds,
                          seed_bg_threshold, use_crf
centroids                 centroid_steps
clusters                  cluster_threshold, or the edited centre points
transition weights        beta, radius (shared by both walks)
instance walk + argmax    clusters, beta, walk_steps, radius, instance_walk,
                          walk_tolerance
instances                 instance_bg_threshold, min_fragment_fraction
semantic walk + argmax    beta, walk_steps, radius
semantic                  semantic_bg_threshold
========================  ==================================================

:meth:`StageCache.iter_update` is the same as a generator that yields a
:class:`~napari_irnet.progress.Step` at every stage and after every
walk step (for progress bars, and so that a Cancel stops a long walk at its
next step). The class holds no GUI state; it is used by the napari widget,
the interactive benchmark and anyone scripting the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..params import Params
from ..progress import Step, StepGenerator, run_steps
from .inference import NetworkOutputs, resolve_device
from .instance_walk import WalkPlan, iter_instance_walk
from .random_walk import iter_transition, transition_weights
from .stages import (
    Prediction,
    assign_from_argmax,
    centroid_points,
    cluster_centroids,
    crf_available,
    find_centroids,
    image_segments,
    seeds_from_cams,
    semantic_from_argmax,
    upsampled_argmax,
)

__all__ = ["STAGE_INPUTS", "StageCache", "clusters_from_points"]

#: parameters read by each cached stage (see the module docstring)
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "seeds": ("seed_fg_threshold", "seed_class_thresholds", "seed_bg_threshold", "use_crf"),
    "centroids": ("centroid_steps",),
    "clusters": ("cluster_threshold",),
    "weights": ("beta", "radius"),
    "walk": ("beta", "walk_steps", "radius"),
    "instance_walk": ("instance_walk", "walk_tolerance"),
    "instances": ("instance_bg_threshold", "min_fragment_fraction"),
    "semantic": ("semantic_bg_threshold",),
}

#: stride of the network grid in image pixels
STRIDE = 4


def clusters_from_points(centroids: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Assign each grid pixel to the centre point nearest its converged centroid.

    Used when a person moved, added or deleted centroids: instead of the
    weak-displacement regions of :func:`cluster_centroids`, the clusters are
    the Voronoi cells of the given points, taken at the position each pixel
    reached along the displacement field.

    Parameters
    ----------
    centroids : (2, h, w) int
        Converged (y, x) grid position of every pixel (:func:`find_centroids`).
    points : (K, 2) float
        Centre points (y, x) in grid units; K >= 1.

    Returns
    -------
    (h, w) int32: index of the nearest point, 0..K-1.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(points) == 0:
        raise ValueError("at least one centre point is needed to form clusters")
    pos = centroids.reshape(2, -1).T.astype(np.float32)  # (N, 2)
    best = np.full(pos.shape[0], np.inf, np.float32)
    arg = np.zeros(pos.shape[0], np.int32)
    for k, p in enumerate(points):  # K is small; avoids an (N, K) temporary
        d = ((pos - p) ** 2).sum(axis=1)
        closer = d < best
        best[closer] = d[closer]
        arg[closer] = k
    return arg.reshape(centroids.shape[1:])


def _key(params: Params, names: tuple[str, ...]) -> tuple:
    values = (getattr(params, n) for n in names)
    return tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in values)


_UNSET = object()  # a slot never computed (None is a valid value: no planes to walk)


@dataclass
class _Slot:
    key: Any = _UNSET
    value: Any = None


class StageCache:
    """One image's network outputs plus the cached results of every later stage.

    Parameters
    ----------
    outputs : NetworkOutputs
        From :func:`~napari_irnet.pipeline.predict.run_networks`.
    params : Params
        Initial parameters.
    image : (H, W, 3) uint8, optional
        Only needed for the CRF refinement of the seeds.
    device : str or torch.device
        Where the walk runs ("auto" picks CUDA when present).
    seeds : bool
        Compute the seeds stage (shown by the plugin; the instances do not
        use it). Without it :attr:`Prediction.seeds` is None.
    """

    def __init__(
        self,
        outputs: NetworkOutputs,
        params: Params | None = None,
        image: np.ndarray | None = None,
        device: str | torch.device | None = "cpu",
        seeds: bool = True,
    ) -> None:
        self.outputs = outputs
        self.params = params or Params()
        self.image = image
        self.device = resolve_device(device)
        self.with_seeds = seeds
        self._segments: np.ndarray | None = None  # the image's segments for the seeds' refinement, made once
        self._points: np.ndarray | None = None  # edited centre points, grid units
        names = ("seeds", "centroids", "clusters", "weights", "iwalk", "instances", "swalk", "semantic")
        self._slots = {name: _Slot() for name in names}
        #: names of the stages recomputed by the last :meth:`update`
        self.last_recomputed: list[str] = []
        #: what the last instance walk walked (windows, growth rounds), for logs and benchmarks
        self.last_walk_plan: WalkPlan | None = None
        # windows of the last instance walk, reused by the next one with the same walk parameters
        self._walk_memo: dict = {}
        self._memo_key: tuple | None = None
        # window plans of the instance walk (they do not depend on beta or the steps)
        self._walk_plans: dict = {}

    # ------------------------------------------------------------------
    def _stage(self, name: str, key: tuple, compute: Callable[[], Any]) -> Any:
        slot = self._slots[name]
        if slot.key is _UNSET or slot.key != key:
            slot.value = compute()
            slot.key = key
            self.last_recomputed.append(name)
        return slot.value

    def _walked_stage(self, name: str, key: tuple, steps: Callable[[], StepGenerator[Any]]) -> StepGenerator[Any]:
        """:meth:`_stage` for a stage computed by a step generator (its steps pass through)."""
        slot = self._slots[name]
        if slot.key is _UNSET or slot.key != key:
            slot.value = yield from steps()
            slot.key = key
            self.last_recomputed.append(name)
        return slot.value

    @property
    def edited_points(self) -> np.ndarray | None:
        """Centre points (K, 2) in image pixels set by :meth:`update`, or None."""
        return None if self._points is None else self._points * STRIDE

    def reset_points(self) -> None:
        """Forget edited centre points: clusters come from the displacement field again."""
        self._points = None

    def update(
        self,
        params: Params | None = None,
        centre_points: np.ndarray | None = None,
        should_stop: Callable[[], bool] | None = None,
        with_semantic: bool = True,
        progress: Callable[[Step], None] | None = None,
    ) -> Prediction:
        """Recompute what changed and return every stage's result.

        Parameters
        ----------
        params : Params, optional
            New parameters (default: the current ones).
        centre_points : (K, 2) float, optional
            Edited instance centres (y, x) in image pixels; they replace the
            clusters found from the displacement field until
            :meth:`reset_points`. An empty array removes every instance
            centre (all pixels then share one cluster).
        should_stop : callable, optional
            Polled between stages and as the walk steps advance; when it returns
            True, :class:`InterruptedError` is raised (results computed so far
            stay cached).
        with_semantic : bool
            False skips the semantic walk, so instances arrive sooner; the
            returned ``semantic`` is then the last one computed (possibly for
            other parameters; None if there is none yet). A later
            ``update()`` computes it.
        progress : callable, optional
            Called with every :class:`~napari_irnet.progress.Step`.
        """

        def on_step(step: Step) -> None:
            if progress is not None:
                progress(step)
            if should_stop is not None and should_stop():
                raise InterruptedError("stopped")

        return run_steps(self.iter_update(params, centre_points, with_semantic), on_step)

    def iter_update(
        self, params: Params | None = None, centre_points: np.ndarray | None = None, with_semantic: bool = True
    ) -> StepGenerator[Prediction]:
        """:meth:`update` as a generator: yields a :class:`~napari_irnet.progress.Step`
        after every stage and as the walk steps advance; returns the :class:`Prediction`."""
        if params is not None:
            params.validate()
            self.params = params
        if centre_points is not None:
            self._points = np.asarray(centre_points, dtype=np.float32).reshape(-1, 2) / STRIDE
        p = self.params
        out = self.outputs
        H, W = out.image_shape
        ids = out.cam.class_ids
        self.last_recomputed = []

        seeds = None
        if self.with_seeds:
            seeds = self._stage("seeds", _key(p, STAGE_INPUTS["seeds"]), lambda: self._seeds(p))
            yield Step("seeds")
        centroids = self._stage(
            "centroids", _key(p, STAGE_INPUTS["centroids"]), lambda: find_centroids(out.irn.displacement, p.centroid_steps)
        )
        clusters = self._clusters(centroids)
        yield Step("clusters")
        boundary = out.irn.boundary.to(self.device)
        weights = self._stage(
            "weights", _key(p, STAGE_INPUTS["weights"]), lambda: transition_weights(boundary, radius=p.radius, beta=p.beta)
        )
        walk_key = _key(p, STAGE_INPUTS["walk"])
        k = int(clusters.max()) + 1

        def instance_walk() -> StepGenerator[Any]:
            if self._memo_key != walk_key:  # windows walked with other parameters are of no use
                self._walk_memo, self._memo_key = {}, walk_key
            argmax, self.last_walk_plan = yield from iter_instance_walk(
                out.cam.strided.to(self.device), boundary, clusters, (H, W),
                beta=p.beta, steps=p.walk_steps, radius=p.radius, tolerance=p.walk_tolerance,
                method=p.instance_walk, weights=weights, memo=self._walk_memo, plans=self._walk_plans,
            )  # fmt: skip
            return argmax

        iwalk_key = (self._slots["clusters"].key, walk_key, _key(p, STAGE_INPUTS["instance_walk"]))
        iwalk = yield from self._walked_stage("iwalk", iwalk_key, instance_walk)
        instances = self._stage(
            "instances",
            (self._slots["iwalk"].key, _key(p, STAGE_INPUTS["instances"])),
            lambda: assign_from_argmax(
                iwalk, np.repeat(ids, k), (H, W), p.instance_bg_threshold, p.min_fragment_fraction
            ),
        )

        def semantic_walk() -> StepGenerator[Any]:
            start = out.cam.strided.to(self.device) * (1.0 - boundary)
            walked = yield from iter_transition(start, weights, p.walk_steps, p.radius, stage="semantic walk")
            return None if walked.shape[0] == 0 else upsampled_argmax(walked, (H, W))

        if with_semantic:
            yield Step("instances")
            swalk = yield from self._walked_stage("swalk", walk_key, semantic_walk)
            semantic = self._stage(
                "semantic",
                (walk_key, _key(p, STAGE_INPUTS["semantic"])),
                lambda: semantic_from_argmax(swalk, ids, (H, W), p.semantic_bg_threshold),
            )
        else:
            semantic = self._slots["semantic"].value
        if self._points is not None:
            points = self._points * float(STRIDE)
        else:
            points = centroid_points(centroids, clusters) * float(STRIDE)
        return Prediction(ids, seeds, centroids, clusters, points, instances, semantic)

    def _seeds(self, p: Params) -> np.ndarray:
        """The seeds stage; the image's segments (when the refinement votes in them) are made once per image."""
        out = self.outputs
        if p.use_crf and self.image is not None and self._segments is None and not crf_available():
            self._segments = image_segments(self.image)
        names = out.class_names
        # per-class thresholds need the maps' class names; outputs without them use the single one
        fg = p.seed_fg_thresholds([names[i] for i in out.cam.class_ids]) if names else p.seed_fg_threshold
        return seeds_from_cams(out.cam.high_res, out.cam.class_ids, fg, p.seed_bg_threshold, self.image, p.use_crf, self._segments)

    def _clusters(self, centroids: np.ndarray) -> np.ndarray:
        """The clusters stage: from the edited centre points when there are any, else from the field."""
        p, out = self.params, self.outputs
        if self._points is not None and len(self._points):
            points_key = ("points", self._points.tobytes(), _key(p, STAGE_INPUTS["centroids"]))
            return self._stage("clusters", points_key, lambda: clusters_from_points(centroids, self._points))
        if self._points is not None:
            return self._stage("clusters", ("points", b"", 0), lambda: np.zeros(centroids.shape[1:], np.int32))
        cluster_key = _key(p, STAGE_INPUTS["clusters"]) + _key(p, STAGE_INPUTS["centroids"])
        return self._stage(
            "clusters", cluster_key, lambda: cluster_centroids(centroids, out.irn.displacement, p.cluster_threshold)
        )
