"""What fine-tuning learns from: relation labels and class maps, exact where a person corrected.

Corrected or accepted images give exact relation labels
(:func:`~napari_irnet.training.targets.relation_labels`: pairs inside one
instance positive, pairs across instances or against background negative);
the other images keep the weak labels mined from the CAMs (confident seeds,
"same class" positive): :func:`finetune_labels`. The classes of the corrected
instances give the CAM network class maps (:func:`correction_class_maps`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..models.checkpoint import Model
from ..params import Params
from .datasets import LabelledImage
from .irn import make_seeds
from .targets import class_map_target, relation_labels

__all__ = [
    "correction_class_maps",
    "finetune_labels",
]


def finetune_labels(
    model: Model,
    items: Sequence[LabelledImage],
    corrections: Sequence[np.ndarray | None],
    reviewed: Sequence[np.ndarray | None] | None = None,
    params: Params | None = None,
    device="auto",
    background: Sequence[np.ndarray | None] | None = None,
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Relation labels for every image: exact where corrected, CAM seeds elsewhere.

    Parameters
    ----------
    items : LabelledImage
        The images with their image-level labels.
    corrections : (H, W) int or None, one per item
        A corrected or accepted instance map (0 = background), or None for an
        image nobody corrected.
    reviewed : (H, W) bool or None, one per item, optional
        The part of a corrected image a person reviewed (default: all of it).
    background : (H, W) bool or None, one per item, optional
        The annotator background of a corrected image (pixels a person
        cleared): true background, never ignore.

    Yields
    ------
    (index, labels, strong) with ``labels`` (H, W) int32 (0 background, 255
    ignore, one value per instance or class) and ``strong`` True for a
    corrected image.
    """
    if len(corrections) != len(items):
        raise ValueError(f"{len(corrections)} corrections for {len(items)} images")
    reviewed = list(reviewed) if reviewed is not None else [None] * len(items)
    background = list(background) if background is not None else [None] * len(items)
    weak = [i for i, c in enumerate(corrections) if c is None]
    for i, (item, inst) in enumerate(zip(items, corrections)):
        if inst is None:
            continue
        if np.asarray(inst).shape != item.image.shape[:2]:
            raise ValueError(
                f"correction of {item.name!r} has shape {np.asarray(inst).shape}, its image {item.image.shape[:2]}"
            )
        yield i, relation_labels(inst, reviewed[i], background[i]), True
    if weak and model.cam is None:
        raise ValueError("images without corrections need the CAM network for their weak labels")
    for j, seeds in make_seeds(model, [items[i] for i in weak], params, device):
        yield weak[j], seeds.astype(np.int32), False


def correction_class_maps(
    corrections: Sequence[np.ndarray | None],
    instance_classes: Sequence[Mapping[int, str] | None],
    classes: Sequence[str],
    reviewed: Sequence[np.ndarray | None] | None = None,
    background: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray | None]:
    """Class maps of the corrected images for :func:`finetune` (None where there is nothing to learn).

    Parameters
    ----------
    corrections : (H, W) int or None, one per image
        Corrected instance maps, as for :func:`finetune_labels`.
    instance_classes : {instance id: class name} or None, one per image
        The class of each corrected instance; instances without one are
        ignored. A class the model does not know is an error.
    classes : the model's class names.
    reviewed : (H, W) bool or None, one per image, optional
        The reviewed part of each image; the rest is ignored.
    background : (H, W) bool or None, one per image, optional
        The annotator background: background (0), never ignored.

    Returns
    -------
    (H, W) int32 class maps (0 background, class + 1, 255 ignore), None for
    an image without a correction or without any known instance class.
    """
    if len(instance_classes) != len(corrections):
        raise ValueError(f"{len(instance_classes)} instance class tables for {len(corrections)} corrections")
    reviewed = list(reviewed) if reviewed is not None else [None] * len(corrections)
    background = list(background) if background is not None else [None] * len(corrections)
    index = {name: i for i, name in enumerate(classes)}
    out: list[np.ndarray | None] = []
    for n, (inst, table, seen, cleared) in enumerate(zip(corrections, instance_classes, reviewed, background)):
        unknown = sorted({str(v) for v in (table or {}).values() if v not in index})
        if inst is not None and unknown:
            raise ValueError(f"correction {n}: class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)})")
        known = {int(k): index[v] for k, v in (table or {}).items()}
        out.append(None if inst is None or not known else class_map_target(inst, known, seen, cleared))
    return out
