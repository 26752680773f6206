"""Training IRNet's boundary and displacement heads on relations mined from the CAMs' seeds (:func:`make_seeds`, :func:`train_irn`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.checkpoint import Model
from ..models.networks import network_layout, normalize_image
from ..params import Params, TrainParams
from ..pipeline.inference import compute_cams, resolve_device, strided_size
from ..pipeline.path_index import PathIndex, pair_labels
from ..pipeline.stages import seeds_from_cams
from .datasets import LabelledImage, RelationDataset
from .loop import PolySchedule, autocast, data_loader, make_optimizer, parallel, set_epoch
from .losses import affinity_displacement_loss, centroid_displacement_loss

__all__ = [
    "estimate_displacement_mean",
    "irn_step",
    "make_seeds",
    "train_irn",
]


def make_seeds(
    model: Model, items: Sequence[LabelledImage], params: Params | None = None, device="auto"
) -> Iterator[tuple[int, np.ndarray]]:
    """Seed maps (reference ``cam_to_ir_label``) of the training images from the CAM network."""
    params = (params or model.params).check_classes(model.classes)
    for i, item in enumerate(items):
        cams = compute_cams(model.cam, item.image, item.class_ids, params, device)
        fg = params.seed_fg_thresholds([model.classes[c] for c in item.class_ids])
        yield i, seeds_from_cams(cams.high_res, item.class_ids, fg, params.seed_bg_threshold, item.image, params.use_crf)


def train_irn(
    model: Model,
    items: Sequence[LabelledImage],
    seeds: Sequence[np.ndarray],
    tp: TrainParams | None = None,
    device="auto",
    instances: bool = False,
) -> Iterator[dict]:
    """Train the boundary and displacement heads on pairs mined from ``seeds``; yields progress.

    With ``instances`` the label maps are instance maps (from
    :func:`~napari_irnet.training.targets.relation_labels`: the fully supervised
    case), and with ``tp.centroid_loss_weight`` > 0 the displacement is also
    regressed to the instance centroids (see :func:`irn_step`). After the last step the mean displacement over the
    training crops is stored in the mean-shift buffer (reference
    ``train_irn``, section 1.8).
    """
    tp = tp or model.train_params
    if not items:
        raise ValueError("no training images")
    dev = resolve_device(device)
    torch.manual_seed(tp.seed)
    net = model.irn.to(dev).train()
    net.mean_shift.running_mean.zero_()
    grid = strided_size((tp.irn_crop_size, tp.irn_crop_size), 4)
    index = PathIndex(tp.train_radius, grid)
    loader = data_loader(RelationDataset(items, seeds, tp, tp.seed), tp.irn_batch_size, tp, dev, tp.seed)
    max_step = len(loader) * tp.irn_epochs
    opt = make_optimizer(net.parameter_groups(), tp.irn_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    step, t0 = 0, time.perf_counter()
    record: dict = {}
    forward = parallel(net, dev)
    for epoch in range(tp.irn_epochs):
        set_epoch(loader, epoch)
        for x, y in loader:
            lr = sched.step()
            flags = torch.ones(x.shape[0], dtype=torch.bool) if instances else None
            losses = irn_step(forward, opt, x, y, index, dev, tp.amp, flags, tp.centroid_loss_weight)
            step += 1
            record = {"stage": "irn", "epoch": epoch, "step": step, "max_step": max_step, "lr": lr, "seconds": time.perf_counter() - t0}
            yield {**record, **losses}
    estimate_displacement_mean(model, items, tp, dev)
    net.eval()
    model.history.append({"stage": "irn", "steps": step, "final_loss": record.get("loss"), "seconds": time.perf_counter() - t0})


def irn_step(
    forward: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    index: PathIndex,
    device: torch.device,
    amp: bool,
    instances: torch.Tensor | None = None,
    centroid_weight: float = 0.0,
    displacement_weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimisation step of IRNet on a batch: images (B, 3, H, W), relation labels (B, h, w).

    ``instances`` (B,) bool marks the samples whose labels are instances
    (ground truth, corrections); with ``centroid_weight`` > 0 their
    displacement is also regressed to the centroids
    (:func:`~napari_irnet.training.losses.centroid_displacement_loss`,
    ``dp_centroid``, added to the total with that weight).
    ``displacement_weight`` (B,) weighs each sample's pairs in the pair
    displacement losses (see
    :func:`~napari_irnet.training.losses.affinity_displacement_loss`).

    Returns the losses as floats: ``loss`` (the total), ``pos``, ``neg``,
    ``dp_fg``, ``dp_bg`` and, with instances, ``dp_centroid``.
    """
    x = network_layout(x.to(device, non_blocking=True))
    bg_pos, fg_pos, neg = (t.to(device) for t in pair_labels(y, index))
    with autocast(device, amp):
        edge, disp = forward(x)
    losses = affinity_displacement_loss(edge.float(), disp.float(), bg_pos, fg_pos, neg, index, displacement_weight)
    if centroid_weight > 0 and instances is not None and bool(instances.any()):
        sel = instances.to(device)
        losses["dp_centroid"] = centroid_displacement_loss(disp.float()[sel], y.to(device)[sel])
        losses["total"] = losses["total"] + centroid_weight * losses["dp_centroid"]
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = out.pop("total")
    return out


@torch.no_grad()
def estimate_displacement_mean(model: Model, items: Sequence[LabelledImage], tp: TrainParams, device) -> torch.Tensor:
    """Mean displacement over top-left crops (zero-padded), stored in the mean-shift buffer."""
    dev = resolve_device(device)
    net = model.irn.to(dev).eval()
    net.mean_shift.running_mean.zero_()
    size = tp.irn_crop_size
    total, count = torch.zeros(2, device=dev), 0
    for item in items:
        crop = np.array(item.image[:size, :size])  # a writable copy of the top-left crop
        x = normalize_image(torch.from_numpy(crop).permute(2, 0, 1))
        x = F.pad(x, [0, size - x.shape[-1], 0, size - x.shape[-2]])
        _, disp = net(x[None].to(dev))
        total += disp[0].float().mean(dim=(1, 2))
        count += 1
    mean = total / max(count, 1)
    net.mean_shift.running_mean.copy_(mean)
    return mean
