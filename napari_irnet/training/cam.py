"""Training the CAM network: from image-level labels (:func:`train_cam`, the multi-label soft-margin loss)
or per pixel from class maps (:func:`train_cam_from_masks`, :func:`cam_pixel_loss`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..models.checkpoint import Model
from ..models.networks import network_layout
from ..params import TrainParams
from ..pipeline.inference import resolve_device
from ..pipeline.stages import IGNORE
from .datasets import CAMDataset, ClassMapDataset, LabelledImage
from .loop import PolySchedule, autocast, data_loader, make_optimizer, parallel, set_epoch

__all__ = [
    "cam_pixel_loss",
    "cam_step",
    "train_cam",
    "train_cam_from_masks",
]


def train_cam(
    model: Model, items: Sequence[LabelledImage], tp: TrainParams | None = None, device="auto"
) -> Iterator[dict]:
    """Train ``model.cam`` with the multi-label soft-margin loss; yields progress per step."""
    tp = tp or model.train_params
    if not items:
        raise ValueError("no training images")
    yield from _cam_training(model, CAMDataset(items, len(model.classes), tp, tp.seed), tp, device, pixels=False)


def _cam_training(model: Model, dataset: Dataset, tp: TrainParams, device, pixels: bool) -> Iterator[dict]:
    """The CAM training loop of :func:`train_cam` (image labels) and :func:`train_cam_from_masks` (``pixels``)."""
    stage = "cam_masks" if pixels else "cam"
    dev = resolve_device(device)
    torch.manual_seed(tp.seed)
    net = model.cam.to(dev).train()
    loader = data_loader(dataset, tp.cam_batch_size, tp, dev, tp.seed)
    max_step = len(loader) * tp.cam_epochs
    opt = make_optimizer(net.parameter_groups(), tp.cam_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    step, t0, loss = 0, time.perf_counter(), None
    forward = parallel(net, dev)
    for epoch in range(tp.cam_epochs):
        set_epoch(loader, epoch)
        for x, y in loader:
            lr = sched.step()
            loss = cam_step(forward, opt, x, y, dev, tp.amp, pixels)
            step += 1
            yield {"stage": stage, "epoch": epoch, "step": step, "max_step": max_step, "loss": loss, "lr": lr, "seconds": time.perf_counter() - t0}
    net.eval()
    model.history.append({"stage": stage, "steps": step, "final_loss": loss, "seconds": time.perf_counter() - t0})


def cam_pixel_loss(logits: torch.Tensor, class_maps: torch.Tensor) -> torch.Tensor:
    """Class-balanced per-pixel loss of CAM logits against class maps.

    Parameters
    ----------
    logits : (B, C, h, w) float
        The CAM network's class scores before the ReLU, on its feature grid.
    class_maps : (B, H, W) int
        0 background, class + 1, 255 ignore, at image resolution.

    Every grid cell is a multi-label target: the share of its valid pixels
    that belong to each class (area downsampling), weighted by the share of
    valid pixels in the cell. Binary cross-entropy splits into a positive
    part (``-log σ(z)`` weighted by the class's pixels in the cell) and a
    negative part (``-log(1 - σ(z))`` weighted by the other valid pixels);
    per class, each part is averaged over its own weight and the two parts
    are averaged, as IRNet's affinity loss balances its pairs. Without the
    balance, a class covering a few percent of the pixels (a nucleus type)
    is pushed to negative logits everywhere, and its ReLU'd CAM vanishes.
    Classes with no pixel in the batch contribute their negative part only;
    the result is the mean over classes with any valid pixel, 0 when every
    pixel is ignored.
    """
    B, C, h, w = logits.shape
    valid = (class_maps != IGNORE).float()
    onehot = F.one_hot(torch.where(class_maps == IGNORE, 0, class_maps).clamp_(0, C), C + 1)[..., 1:]
    onehot = onehot.permute(0, 3, 1, 2).float() * valid[:, None]
    pos = F.interpolate(onehot, size=(h, w), mode="area")  # valid share of each class in each cell
    neg = F.interpolate(valid[:, None], size=(h, w), mode="area") - pos  # valid share of everything else
    z = logits.float()
    pos_sum, neg_sum = pos.sum(dim=(0, 2, 3)), neg.sum(dim=(0, 2, 3))
    pos_part = (pos * F.softplus(-z)).sum(dim=(0, 2, 3)) / pos_sum.clamp_min(1e-6)
    neg_part = (neg * F.softplus(z)).sum(dim=(0, 2, 3)) / neg_sum.clamp_min(1e-6)
    has_pos, has_neg = pos_sum > 1e-6, neg_sum > 1e-6
    per_class = torch.where(has_pos & has_neg, (pos_part + neg_part) / 2, torch.where(has_pos, pos_part, neg_part))
    used = has_pos | has_neg
    if not bool(used.any()):
        return z.sum() * 0.0
    return per_class[used].mean()


def cam_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    amp: bool,
    pixels: bool = True,
) -> float:
    """One optimisation step of the CAM network; returns the loss.

    ``pixels``: ``y`` holds class maps (B, H, W) and the loss is
    :func:`cam_pixel_loss`; otherwise ``y`` holds image labels (B, C) and the
    loss is the multi-label soft margin of the reference.
    """
    x, y = network_layout(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
    with autocast(device, amp):
        logits = net(x, pixels=pixels)
    loss = cam_pixel_loss(logits, y) if pixels else F.multilabel_soft_margin_loss(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_cam_from_masks(
    model: Model, items: Sequence[LabelledImage], class_maps: Sequence[np.ndarray], tp: TrainParams | None = None, device="auto"
) -> Iterator[dict]:
    """Train ``model.cam`` per pixel from class maps (fully supervised); yields progress per step.

    The same network, parameters and schedule as :func:`train_cam`, with
    :func:`cam_pixel_loss` on the class maps (0 background, class + 1, 255
    ignore; :func:`~napari_irnet.training.targets.class_map_target` makes them
    from instance maps) instead of the image-level loss: the upper bound of
    the weak CAMs, and what fine-tuning does with corrected images.
    """
    tp = tp or model.train_params
    if not items:
        raise ValueError("no training images")
    yield from _cam_training(model, ClassMapDataset(items, class_maps, tp, tp.seed), tp, device, pixels=True)
