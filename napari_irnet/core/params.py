"""The parameters of the pipeline: one serialisable dataclass.

Every name here is used unchanged by the core, the command line
(``--seed-fg-threshold`` for ``seed_fg_threshold``) and the napari widgets.
Defaults are those of the paper and of the reference implementation
(jiwoon-ahn/irn, ``run_sample.py`` and the ``make_*_seg_labels`` steps).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


#: the instance walk's methods (:mod:`napari_irnet.core.instance_walk`); here so that the
#: command line can list them without importing torch
INSTANCE_WALKS = ("auto", "local", "global")


@dataclass
class Params:
    """Inference parameters of IRNet, with the reference defaults.

    Distances are in stride-4 grid units unless said otherwise.
    """

    #: image scales of the multi-scale CAM (each with its horizontal flip)
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    #: CAM score above which a pixel is a confident foreground seed (``conf_fg_thres``)
    seed_fg_threshold: float = 0.30
    #: CAM score below which a pixel is a confident background seed (``conf_bg_thres``)
    seed_bg_threshold: float = 0.05
    #: background level when a CAM alone is turned into a class map (``cam_eval_thres``)
    cam_eval_threshold: float = 0.15
    #: refine seeds with a dense CRF when pydensecrf is installed
    use_crf: bool = True
    #: radius of the inter-pixel relations at inference (69 neighbours at 5)
    radius: int = 5
    #: exponent on the affinities (the paper's beta)
    beta: float = 10.0
    #: number of random-walk steps (the reference's 2**exp_times with exp_times=8)
    walk_steps: int = 256
    #: iterations of the centroid refinement along the displacement field
    centroid_steps: int = 300
    #: displacement magnitude under which a pixel counts as a centroid (grid units)
    cluster_threshold: float = 2.5
    #: background level of the instance assignment after the walk (``ins_seg_bg_thres``)
    instance_bg_threshold: float = 0.25
    #: background level of the semantic assignment after the walk (``sem_seg_bg_thres``)
    semantic_bg_threshold: float = 0.25
    #: connected fragments under this fraction of the image area get score 0
    min_fragment_fraction: float = 0.01
    #: how the instance walk runs: "local" walks each instance only in windows around it (cost
    #: grows with the pixels), "global" walks every instance over the whole image (the
    #: reference's formulation, cost grows with pixels x instances), "auto" picks the cheaper
    instance_walk: str = "auto"
    #: the local instance walk leaves out starting mass under this fraction of the maximum and
    #: grows a window until its border holds less; walked scores change by at most about this
    #: much (0: every plane everywhere, as the global walk)
    walk_tolerance: float = 0.01
    #: largest image side run through the networks in one piece (pixels);
    #: larger images are tiled with overlap
    tile_size: int = 1024
    #: overlap between network tiles (pixels)
    tile_overlap: int = 128
    #: "irnet" (this project's behaviour) or "reference" (reproduce the
    #: reference implementation's outputs, e.g. its 512x512 zero padding of
    #: IRNet inputs, which changes GroupNorm statistics)
    preset: str = "irnet"

    def __post_init__(self) -> None:
        self.cam_scales = tuple(float(s) for s in self.cam_scales)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of range."""
        checks = [
            ("cam_scales", len(self.cam_scales) > 0 and all(s > 0 for s in self.cam_scales), "positive scales"),
            ("seed_fg_threshold", 0.0 <= self.seed_fg_threshold <= 1.0, "in [0, 1]"),
            ("seed_bg_threshold", 0.0 <= self.seed_bg_threshold <= 1.0, "in [0, 1]"),
            ("cam_eval_threshold", 0.0 <= self.cam_eval_threshold <= 1.0, "in [0, 1]"),
            ("radius", 1 <= int(self.radius) <= 32, "an integer in [1, 32]"),
            ("beta", self.beta > 0, "positive"),
            ("walk_steps", int(self.walk_steps) >= 0, ">= 0"),
            ("centroid_steps", int(self.centroid_steps) >= 0, ">= 0"),
            ("cluster_threshold", self.cluster_threshold > 0, "positive"),
            ("instance_bg_threshold", 0.0 <= self.instance_bg_threshold <= 1.0, "in [0, 1]"),
            ("semantic_bg_threshold", 0.0 <= self.semantic_bg_threshold <= 1.0, "in [0, 1]"),
            ("min_fragment_fraction", 0.0 <= self.min_fragment_fraction < 1.0, "in [0, 1)"),
            ("instance_walk", self.instance_walk in INSTANCE_WALKS, " or ".join(map(repr, INSTANCE_WALKS))),
            ("walk_tolerance", 0.0 <= self.walk_tolerance < 1.0, "in [0, 1)"),
            ("tile_size", int(self.tile_size) >= 64, ">= 64"),
            ("tile_overlap", 0 <= int(self.tile_overlap) < int(self.tile_size) // 2, "in [0, tile_size/2)"),
            ("preset", self.preset in ("irnet", "reference"), "'irnet' or 'reference'"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"parameter {name}={getattr(self, name)!r} must be {what}")

    def replace(self, **changes: Any) -> "Params":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cam_scales"] = list(self.cam_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Params":
        """Build from a dict; unknown keys raise, missing keys take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Params":
        return cls.from_dict(json.loads(text))


#: IRNet's displacement heads (:class:`~napari_irnet.core.networks.IRNet`); here so
#: that the command line can list them without importing torch
DISPLACEMENT_HEADS = ("reference", "context")


@dataclass
class TrainParams:
    """Training hyper-parameters, reference defaults (``run_sample.py``).

    The reference's PolyOptimizer passes weight decay into SGD's momentum slot,
    so its effective momentum is 1e-4; ``momentum`` keeps that value by default.
    """

    cam_epochs: int = 5
    cam_batch_size: int = 16
    cam_learning_rate: float = 0.1
    cam_crop_size: int = 512
    #: random long-side resize range of the CAM augmentation (pixels)
    cam_resize_long: tuple[int, int] = (320, 640)
    irn_epochs: int = 3
    irn_batch_size: int = 32
    irn_learning_rate: float = 0.1
    irn_crop_size: int = 512
    #: random rescale range of the IRNet augmentation
    irn_rescale: tuple[float, float] = (0.5, 1.5)
    #: relation radius in training (152 forward directions at 10)
    train_radius: int = 10
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    poly_power: float = 0.9
    #: learning-rate multiplier of the new layers (classifier, displacement head)
    new_layer_lr_mult: float = 10.0
    #: epochs of fine-tuning IRNet from corrections (over the mixed data set)
    finetune_epochs: int = 5
    #: learning rate of fine-tuning (a tenth of ``irn_learning_rate``: the heads are trained already)
    finetune_learning_rate: float = 0.01
    #: how many times a corrected image is drawn per epoch against once for a weakly labelled one
    correction_weight: int = 4
    #: fine-tuning also trains the CAM network per pixel on the corrected images' class maps
    finetune_cam: bool = True
    #: weight of the direct regression of the displacement to the instance centroids on instance
    #: labels (corrections, ground truth); 0: the reference's pair losses only (on CoNSeP at CPU
    #: budgets the regression made the upper bound worse, see BENCHMARKS.md)
    centroid_loss_weight: float = 0.0
    #: weight of the uncorrected images' pairs in the displacement losses while fine-tuning with
    #: corrections (1: the same as a corrected image's; their boundary pairs always count fully)
    weak_displacement_weight: float = 1.0
    #: fine-tuning with corrections always starts the displacement branch afresh; off, it does so
    #: only when the field has collapsed to zero on the corrected images, as a weak model's does when
    #: its seeds span many objects (core.finetune.check_displacement_field; see BENCHMARKS.md)
    finetune_reset_displacement: bool = False
    #: mixed precision on CUDA
    amp: bool = True
    seed: int = 0
    num_workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cam_resize_long"] = list(self.cam_resize_long)
        d["irn_rescale"] = list(self.irn_rescale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training parameter(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        for key in ("cam_resize_long", "irn_rescale"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
