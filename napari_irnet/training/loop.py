"""Training of the CAM network and of IRNet from image-level labels (and from masks).

Both loops are generators: they yield a progress dict after every step
(``stage``, ``epoch``, ``step``, ``max_step``, the losses, ``lr``, ``seconds``)
so a command line can draw a progress bar and a GUI can plot losses and stop
by simply not asking for the next step. Defaults follow the reference
implementation (``irnet-method.md`` sections 1.1 and 1.8), including its
optimiser: SGD with a polynomial learning-rate decay (power 0.9), weight decay
1e-4, new layers at 10x the learning rate, and an effective momentum of 1e-4
(the reference passes weight decay into SGD's momentum slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..models.checkpoint import Model
from ..models.networks import normalize_image
from ..params import Params, TrainParams
from ..pipeline.inference import compute_cams, resolve_device, strided_size
from ..pipeline.path_index import PathIndex, pair_labels
from ..pipeline.stages import IGNORE, seeds_from_cams
from .distributed import distributed_context
from .losses import affinity_displacement_loss, centroid_displacement_loss


@dataclass
class LabelledImage:
    """A training image with its image-level labels (0-based class ids)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    class_ids: list[int]


def _resize(array: np.ndarray, size_hw: tuple[int, int], order: int) -> np.ndarray:
    resample = Image.BICUBIC if order == 3 else Image.NEAREST
    return np.asarray(Image.fromarray(array).resize((size_hw[1], size_hw[0]), resample))


def _random_crop(
    image: torch.Tensor, label: torch.Tensor | None, size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random ``size``x``size`` window; images pad with 0, labels with IGNORE."""
    h, w = image.shape[-2:]
    ph, pw = max(size, h), max(size, w)
    oy = int(torch.randint(0, ph - h + 1, (1,), generator=gen))
    ox = int(torch.randint(0, pw - w + 1, (1,), generator=gen))
    canvas = image.new_zeros(image.shape[:-2] + (ph, pw))
    canvas[..., oy : oy + h, ox : ox + w] = image
    cy = int(torch.randint(0, ph - size + 1, (1,), generator=gen))
    cx = int(torch.randint(0, pw - size + 1, (1,), generator=gen))
    image = canvas[..., cy : cy + size, cx : cx + size]
    if label is not None:
        lab = label.new_full((ph, pw), IGNORE)
        lab[oy : oy + h, ox : ox + w] = label
        label = lab[cy : cy + size, cx : cx + size]
    return image, label


class _Augmented(Dataset):
    """Random augmentation drawn from a generator seeded by (seed, epoch, index).

    So a sample's augmentation does not depend on which process or data
    loader worker draws it, nor on what was drawn before: distributed runs,
    multi-worker loading and resumed runs see the same crops and flips.
    """

    def __init__(self, seed: int = 0):
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, i: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.seed * 100_003 + self.epoch) * 1_000_003 + int(i)) % (2**63))


class CAMDataset(_Augmented):
    """Random long-side resize, normalise, flip, random crop (reference ``train_cam``)."""

    def __init__(self, items: Sequence[LabelledImage], num_classes: int, tp: TrainParams, seed: int = 0):
        super().__init__(seed)
        self.items, self.num_classes, self.tp = list(items), num_classes, tp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        x, _ = _cam_augment(item.image, None, self.tp, self._rng(i))
        y = torch.zeros(self.num_classes)
        y[item.class_ids] = 1.0
        return x, y


def _cam_augment(
    image: np.ndarray, label: np.ndarray | None, tp: TrainParams, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CAM augmentation of an image and, optionally, its label map (nearest neighbour)."""
    h, w = image.shape[:2]
    lo, hi = tp.cam_resize_long
    target = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    s = target / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    x = normalize_image(torch.from_numpy(np.array(_resize(image, size, 3))).permute(2, 0, 1))
    y = None if label is None else torch.from_numpy(_resize(np.asarray(label, np.int32), size, 0).astype(np.int64))
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(-1)
        y = None if y is None else y.flip(-1)
    return _random_crop(x, y, tp.cam_crop_size, gen)


class ClassMapDataset(_Augmented):
    """Images with class maps (0 background, class + 1, 255 ignore), augmented as :class:`CAMDataset`."""

    def __init__(self, items: Sequence[LabelledImage], class_maps: Sequence[np.ndarray], tp: TrainParams, seed: int = 0):
        super().__init__(seed)
        if len(items) != len(class_maps):
            raise ValueError(f"{len(class_maps)} class maps for {len(items)} images")
        for item, cmap in zip(items, class_maps):
            if np.shape(cmap) != item.image.shape[:2]:
                raise ValueError(f"class map of {item.name!r} has shape {np.shape(cmap)}, its image {item.image.shape[:2]}")
        self.items, self.class_maps, self.tp = list(items), list(class_maps), tp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return _cam_augment(self.items[i].image, self.class_maps[i], self.tp, self._rng(i))


class RelationDataset(_Augmented):
    """Images with relation labels: rescale, normalise, flip, crop, labels x0.25 (reference ``train_irn``).

    Labels are (H, W) integer maps: 0 background, 255 ignore, any other value
    a region whose pixels relate positively to each other (a class in the
    CAM seeds, an instance in :func:`~napari_irnet.training.targets.relation_labels`).
    """

    def __init__(self, items: Sequence[LabelledImage], seeds: Sequence[np.ndarray], tp: TrainParams, seed: int = 0):
        super().__init__(seed)
        self.items, self.seeds, self.tp = list(items), list(seeds), tp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, seed_map, gen = self.items[i].image, self.seeds[i], self._rng(i)
        lo, hi = self.tp.irn_rescale
        s = lo + float(torch.rand(1, generator=gen)) * (hi - lo)
        h, w = image.shape[:2]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        img, lab = _resize(image, size, 3), _resize(np.asarray(seed_map, np.int32), size, 0)
        x = normalize_image(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        y = torch.from_numpy(lab.astype(np.int64))
        if torch.rand(1, generator=gen) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        x, y = _random_crop(x, y, self.tp.irn_crop_size, gen)
        grid = strided_size(y.shape, 4)
        y = torch.from_numpy(_resize(y.numpy().astype(np.int32), grid, 0).astype(np.int64))
        return x, y


class PolySchedule:
    """lr = base * (1 - step / max_step) ** power for every parameter group."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_step: int, power: float = 0.9):
        self.optimizer, self.max_step, self.power = optimizer, max(1, max_step), power
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0

    def step(self) -> float:
        factor = (1 - min(self.step_count, self.max_step) / self.max_step) ** self.power
        for g, base in zip(self.optimizer.param_groups, self.base):
            g["lr"] = base * factor
        self.step_count += 1
        return self.optimizer.param_groups[0]["lr"]


def make_optimizer(groups: tuple[list, list], lr: float, tp: TrainParams, new_layer_lr_mult: float | None = None) -> torch.optim.SGD:
    """SGD over (trained layers, new layers), the new ones at ``new_layer_lr_mult`` (default ``tp``'s) times ``lr``."""
    mult = tp.new_layer_lr_mult if new_layer_lr_mult is None else new_layer_lr_mult
    return torch.optim.SGD(
        [
            {"params": [p for p in groups[0] if p.requires_grad], "lr": lr},
            {"params": [p for p in groups[1] if p.requires_grad], "lr": lr * mult},
        ],
        lr=lr,
        momentum=tp.momentum,
        weight_decay=tp.weight_decay,
    )


def _autocast(device: torch.device, enabled: bool):
    use = enabled and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


def _loader(dataset: Dataset, batch_size: int, tp: TrainParams, device: torch.device, seed: int) -> DataLoader:
    """Shuffled batches; under ``torch.distributed`` each process gets its share.

    ``batch_size`` is the global batch: with W processes each takes
    ``batch_size / W`` samples per step, and the W shares of a step are
    exactly the samples a single process would take (the same
    :class:`DistributedSampler` permutation, seeded by ``seed + epoch``).
    """
    rank, world = distributed_context()
    batch = max(1, min(batch_size, len(dataset)))
    if batch % world:
        raise ValueError(f"batch size {batch} cannot be split evenly over {world} processes")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch // world,
        sampler=sampler,
        drop_last=True,
        num_workers=tp.num_workers,
        pin_memory=device.type == "cuda",
    )


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def _parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` wrapped in DistributedDataParallel when several processes train, else ``net``."""
    if distributed_context()[1] == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # the frozen first stage keeps parameters that get no gradient
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)


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
    loader = _loader(dataset, tp.cam_batch_size, tp, dev, tp.seed)
    max_step = len(loader) * tp.cam_epochs
    opt = make_optimizer(net.parameter_groups(), tp.cam_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    step, t0, loss = 0, time.perf_counter(), None
    forward = _parallel(net, dev)
    for epoch in range(tp.cam_epochs):
        _set_epoch(loader, epoch)
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
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with _autocast(device, amp):
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


def make_seeds(
    model: Model, items: Sequence[LabelledImage], params: Params | None = None, device="auto"
) -> Iterator[tuple[int, np.ndarray]]:
    """Seed maps (reference ``cam_to_ir_label``) of the training images from the CAM network."""
    params = params or model.params
    for i, item in enumerate(items):
        cams = compute_cams(model.cam, item.image, item.class_ids, params, device)
        yield i, seeds_from_cams(
            cams.high_res, item.class_ids, params.seed_fg_threshold, params.seed_bg_threshold, item.image, params.use_crf
        )


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
    loader = _loader(RelationDataset(items, seeds, tp, tp.seed), tp.irn_batch_size, tp, dev, tp.seed)
    max_step = len(loader) * tp.irn_epochs
    opt = make_optimizer(net.parameter_groups(), tp.irn_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    step, t0 = 0, time.perf_counter()
    record: dict = {}
    forward = _parallel(net, dev)
    for epoch in range(tp.irn_epochs):
        _set_epoch(loader, epoch)
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
    x = x.to(device, non_blocking=True)
    bg_pos, fg_pos, neg = (t.to(device) for t in pair_labels(y, index))
    with _autocast(device, amp):
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


__all__ = [
    "CAMDataset",
    "ClassMapDataset",
    "LabelledImage",
    "cam_pixel_loss",
    "cam_step",
    "PolySchedule",
    "RelationDataset",
    "distributed_context",
    "estimate_displacement_mean",
    "irn_step",
    "make_seeds",
    "train_cam",
    "train_cam_from_masks",
    "train_irn",
]
