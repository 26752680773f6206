"""Training images and the data sets the loops draw from: crops, flips and rescaling, the same in every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..models.networks import normalize_image
from ..params import TrainParams
from ..pipeline.inference import strided_size
from ..pipeline.stages import IGNORE

__all__ = [
    "CAMDataset",
    "ClassMapDataset",
    "LabelledImage",
    "RelationDataset",
]


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
    image: np.ndarray, label: np.ndarray | None, tp: TrainParams, gen: torch.Generator, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CAM augmentation of an image and, optionally, its label map (nearest neighbour).

    The long side is drawn from ``tp.cam_resize_long``, then multiplied by ``scale``.
    """
    h, w = image.shape[:2]
    lo, hi = tp.cam_resize_long
    target = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    s = scale * target / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    x = normalize_image(torch.from_numpy(np.array(_resize(image, size, 3))).permute(2, 0, 1))
    y = None if label is None else torch.from_numpy(_resize(np.asarray(label, np.int32), size, 0).astype(np.int64))
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(-1)
        y = None if y is None else y.flip(-1)
    return _random_crop(x, y, tp.cam_crop_size, gen)


class ClassMapDataset(_Augmented):
    """Images with class maps (0 background, class + 1, 255 ignore), augmented as :class:`CAMDataset`.

    ``scales``: the image is also rescaled by one of these, drawn per sample:
    the CAM scales the model predicts with (``Params.cam_scales``), so that
    the per-pixel training teaches the CAM network at the sizes it is used at
    (a model whose CAMs are made at twice the image's size, trained per pixel
    at its own size only, got worse proposals; BENCHMARKS.md, scripted
    annotator).
    """

    def __init__(
        self, items: Sequence[LabelledImage], class_maps: Sequence[np.ndarray], tp: TrainParams, seed: int = 0, scales: Sequence[float] = (1.0,)
    ):
        super().__init__(seed)
        self.scales = tuple(float(v) for v in scales) or (1.0,)
        if len(items) != len(class_maps):
            raise ValueError(f"{len(class_maps)} class maps for {len(items)} images")
        for item, cmap in zip(items, class_maps):
            if np.shape(cmap) != item.image.shape[:2]:
                raise ValueError(f"class map of {item.name!r} has shape {np.shape(cmap)}, its image {item.image.shape[:2]}")
        self.items, self.class_maps, self.tp = list(items), list(class_maps), tp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        gen = self._rng(i)
        scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=gen))] if len(self.scales) > 1 else self.scales[0]
        return _cam_augment(self.items[i].image, self.class_maps[i], self.tp, gen, scale)


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
