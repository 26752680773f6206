"""Has IRNet's displacement field collapsed? Its vectors compared with the corrections' centroids.

A weak model trained on seeds that span many objects (nuclei in tissue) can
learn a zero displacement field: it then finds one instance per region, and
fine-tuning does not move it. :func:`check_displacement_field` measures the
field on the corrected instances; :func:`~napari_irnet.training.finetune.finetune`
starts the displacement branch afresh when it has collapsed
(BENCHMARKS.md, Human in the loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..models.checkpoint import Model
from ..params import Params
from ..pipeline.inference import compute_irnet
from ..pipeline.stages import IGNORE
from .datasets import LabelledImage
from .targets import displacement_target, to_grid

__all__ = [
    "COLLAPSED_LENGTH_RATIO",
    "MIN_CHECK_CELLS",
    "check_displacement_field",
    "describe_reset",
    "FieldCheck",
]


#: a displacement field whose vectors on the corrected instances are shorter than this share of
#: the vectors to their centroids, on average, counts as collapsed (the weak CoNSeP model's: 0.005)
COLLAPSED_LENGTH_RATIO = 0.2


#: fewer instance grid cells than this in the checked crops say nothing about the field
MIN_CHECK_CELLS = 16


@dataclasses.dataclass(frozen=True)
class FieldCheck:
    """How IRNet's displacement field compares with the corrections' centroids.

    Lengths are means over the grid cells inside the corrected instances, in
    grid cells (stride 4).

    Attributes
    ----------
    predicted_length : mean length of the model's displacement vectors
    target_length : mean length of the vectors to each instance's centroid
        (:func:`~napari_irnet.training.targets.displacement_target`)
    error : mean length of their difference (a zero field's error is ``target_length``)
    cells : how many grid cells were compared
    """

    predicted_length: float
    target_length: float
    error: float
    cells: int

    @property
    def collapsed(self) -> bool:
        """The field is near zero where the corrections ask for vectors (:data:`COLLAPSED_LENGTH_RATIO`)."""
        return self.cells >= MIN_CHECK_CELLS and self.predicted_length < COLLAPSED_LENGTH_RATIO * self.target_length

    def describe(self) -> str:
        return (f"mean displacement {self.predicted_length:.2f} grid cells on the corrected instances, "
                f"{self.target_length:.2f} to their centroids (error {self.error:.2f}, {self.cells} cells)")  # fmt: skip


def check_displacement_field(
    model: Model,
    items: Sequence[LabelledImage],
    labels: Sequence[np.ndarray],
    params: Params | None = None,
    device="auto",
    max_images: int = 4,
    crop: int = 512,
) -> FieldCheck:
    """Compare ``model.irn``'s displacement field with the centroids of corrected instances.

    Parameters
    ----------
    items, labels : corrected images and their relation labels
        (:func:`~napari_irnet.training.targets.relation_labels`: 0 background,
        255 ignore, one value per instance).
    max_images, crop : the first ``max_images`` images are checked, each on a
        window of at most ``crop`` x ``crop`` pixels that starts at its first
        corrected instance (the check costs a few inferences).

    Returns
    -------
    FieldCheck
        With ``collapsed`` True when the field has gone to zero, as a weak model
        trained on seeds spanning many objects does (BENCHMARKS.md, Human in the loop).
    """
    params = params or model.params
    sums = np.zeros(3)
    cells = 0
    for item, lab in list(zip(items, labels))[:max_images]:
        lab = np.asarray(lab)
        rows, cols = np.nonzero((lab != 0) & (lab != IGNORE))
        if rows.size == 0:
            continue
        # the window starts at the first instance row and column, moved back so that it fits the image
        y0 = min(int(rows.min()), max(0, lab.shape[0] - crop)) // 4 * 4
        x0 = min(int(cols.min()), max(0, lab.shape[1] - crop)) // 4 * 4
        image, lab = item.image[y0 : y0 + crop, x0 : x0 + crop], lab[y0 : y0 + crop, x0 : x0 + crop]
        instances = np.where(lab == IGNORE, 0, lab)
        target, valid = displacement_target(instances, 4)
        valid &= to_grid(lab, 4) != IGNORE
        if not valid.any():
            continue
        disp = compute_irnet(model.irn, image, params, device).displacement.numpy()[:, : valid.shape[0], : valid.shape[1]]
        sums += [
            np.linalg.norm(disp, axis=0)[valid].sum(),
            np.linalg.norm(target, axis=0)[valid].sum(),
            np.linalg.norm(disp - target, axis=0)[valid].sum(),
        ]
        cells += int(valid.sum())
    mean = sums / max(cells, 1)
    return FieldCheck(float(mean[0]), float(mean[1]), float(mean[2]), cells)


def describe_reset(entry: Mapping) -> str | None:
    """A sentence on what a fine-tuning run did to the displacement branch (its ``model.history`` entry), or None."""
    reset, check = entry.get("displacement_reset"), entry.get("field_check")
    if reset == "asked":
        return "the displacement branch started afresh (finetune_reset_displacement)"
    if reset == "collapsed":
        return (f"the displacement field had collapsed ({FieldCheck(**check).describe()}): "
                "its branch started afresh and learnt from the corrections")  # fmt: skip
    return None
