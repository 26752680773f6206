"""From an image and its image-level labels to instances and semantic labels.

Data flow one way: image -> network outputs (expensive, cache them) ->
post-processing stages (cheap, re-run on every parameter change)::

    outputs = run_networks(model, image, class_ids, params)
    prediction = postprocess(outputs, params)

or both at once with :func:`predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..models.checkpoint import Model
from ..params import Params
from ..progress import Step
from .cache import StageCache
from .inference import (
    NetworkOutputs,
    compute_cams,
    compute_irnet,
    network_input,
    network_layout,
    network_precision,
    resolve_device,
    run_tiled,
)
from .stages import Prediction, instance_cams, propagate


def run_networks(
    model: Model,
    image: np.ndarray,
    class_ids: Sequence[int],
    params: Params | None = None,
    device: str | torch.device | None = "auto",
) -> NetworkOutputs:
    """Run the CAM network (multi-scale + flip) and IRNet on ``image`` (H, W, 3) uint8."""
    model.require("cam", "irn")  # a CAM-only checkpoint's IRNet has random heads: refuse, say what trains it
    params = params or model.params
    dev = resolve_device(device)
    cam = compute_cams(model.cam, image, class_ids, params, dev)
    irn = compute_irnet(model.irn, image, params, dev)
    return NetworkOutputs(tuple(image.shape[:2]), cam, irn, tuple(model.classes))


def walk_instances(outputs: NetworkOutputs, clusters: np.ndarray, params: Params, device="cpu") -> torch.Tensor:
    """Random walk of the instance-wise CAMs: (C*K, h, w), plane c*K + k."""
    dev = resolve_device(device)
    scores = instance_cams(outputs.cam.strided.to(dev), clusters)
    return propagate(scores, outputs.irn.boundary.to(dev), params.beta, params.walk_steps, params.radius)


def postprocess(
    outputs: NetworkOutputs,
    params: Params,
    image: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    centre_points: np.ndarray | None = None,
    progress: Callable[[Step], None] | None = None,
    seeds: bool = True,
) -> Prediction:
    """All stages after the networks, computed once.

    To re-run stages after a parameter change or an edit, keep a
    :class:`~napari_irnet.pipeline.cache.StageCache` instead: it reuses every
    stage whose inputs did not change.

    Parameters
    ----------
    image : (H, W, 3) uint8, optional
        Only used for the CRF refinement of the seeds.
    centre_points : (K, 2) float, optional
        Instance centres (y, x) in image pixels to use instead of the ones
        found from the displacement field (e.g. after a person edited them).
    progress : callable, optional
        Called with a :class:`~napari_irnet.progress.Step` after every
        stage and walk step (it may raise to stop).
    seeds : bool
        Compute the seeds (``Prediction.seeds``; the instances do not need
        them, and on large images their refinement is a stage of its own).
    """
    return StageCache(outputs, params, image, device, seeds=seeds).update(centre_points=centre_points, progress=progress)


def predict(
    model: Model,
    image: np.ndarray,
    classes: Sequence[str],
    params: Params | None = None,
    device: str | torch.device | None = "auto",
    progress: Callable[[Step], None] | None = None,
    seeds: bool = True,
) -> tuple[NetworkOutputs, Prediction]:
    """Network outputs and every stage for one image with the given class names.

    ``progress`` is called with every post-processing step, ``seeds`` False
    leaves the seeds out (see :func:`postprocess`).
    """
    params = params or model.params
    outputs = run_networks(model, image, model.class_ids(list(classes)), params, device)
    return outputs, postprocess(outputs, params, image, device, progress=progress, seeds=seeds)


@torch.no_grad()
def predict_classes(
    model: Model, image: np.ndarray, threshold: float = 0.5, device: str | torch.device | None = "auto"
) -> list[str]:
    """Class names the CAM classifier finds in ``image`` (sigmoid > ``threshold``, flip-averaged).

    For images without image-level labels; with labels, use them instead.
    """
    prob = class_probabilities(model, image, device)
    return [model.classes[i] for i in torch.nonzero(prob > threshold).flatten().tolist()]


@torch.no_grad()
def class_probabilities(model: Model, image: np.ndarray, device: str | torch.device | None = "auto") -> torch.Tensor:
    """The CAM classifier's probability of every class in ``image``, flip-averaged: (num_classes,).

    Large images are tiled as the CAMs are (``model.params.tile_size``): the
    classifier's logits are the mean of its per-cell logits, so the tiles'
    cells are averaged.
    """
    model.require("cam", task="finding the classes")
    dev = resolve_device(device)
    net = model.cam.to(dev).eval()
    x, prepare = network_input(image, dev, model.params.tile_size)

    def both(t: torch.Tensor) -> torch.Tensor:
        t = network_layout(t)
        with network_precision(model.params, dev):
            return torch.cat([net(t, pixels=True), net(t.flip(-1), pixels=True)], dim=1).float()

    cells = run_tiled(both, x, 16, model.params.tile_size, model.params.tile_overlap, prepare)
    logits = cells.mean(dim=(2, 3))[0].view(2, -1)  # (image, flipped image) x classes
    return torch.sigmoid(logits).mean(0).cpu()
