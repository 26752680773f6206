"""What the training loops share: the optimiser and its schedule, mixed precision, batches, distributed processes.

The loops (:mod:`~napari_irnet.training.cam`, :mod:`~napari_irnet.training.irn`,
:mod:`~napari_irnet.training.finetune`) are generators: they yield a progress dict after every
step (``stage``, ``epoch``, ``step``, ``max_step``, the losses, ``lr``, ``seconds``) so a command
line can draw a progress bar and a GUI can plot losses and stop by simply not asking for the
next step. Defaults follow the reference implementation (``irnet-method.md`` sections 1.1 and
1.8), including its optimiser: SGD with a polynomial learning-rate decay (power 0.9), weight
decay 1e-4, new layers at 10x the learning rate, and an effective momentum of 1e-4 (the
reference passes weight decay into SGD's momentum slot).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..params import TrainParams
from .distributed import distributed_context

__all__ = [
    "autocast",
    "data_loader",
    "make_optimizer",
    "parallel",
    "PolySchedule",
    "set_epoch",
]


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


def autocast(device: torch.device, enabled: bool):
    """bfloat16 mixed precision (``TrainParams.amp``) on CUDA and on CPUs with bfloat16 matrix units.

    The weights, gradients and optimiser stay float32; only the networks'
    convolutions and matrix products run in bfloat16. CPUs without such
    units (no Intel AMX) would emulate bfloat16 more slowly than float32,
    so they train in float32 whatever ``enabled`` says.
    """
    from ..pipeline.inference import bfloat16_units

    use = enabled and (device.type == "cuda" or (device.type == "cpu" and bfloat16_units(device)))
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


def data_loader(dataset: Dataset, batch_size: int, tp: TrainParams, device: torch.device, seed: int) -> DataLoader:
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


def set_epoch(loader: DataLoader, epoch: int) -> None:
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` wrapped in DistributedDataParallel when several processes train, else ``net``."""
    if distributed_context()[1] == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # the frozen first stage keeps parameters that get no gradient
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
