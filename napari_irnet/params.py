"""The parameters of the pipeline: one serialisable dataclass.

Every name here is used unchanged by the engine, the command line
(``--seed-fg-threshold`` for ``seed_fg_threshold``) and the napari widgets.
Defaults are those of the paper and of the reference implementation
(jiwoon-ahn/irn, ``run_sample.py`` and the ``make_*_seg_labels`` steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: the instance walk's methods (:mod:`napari_irnet.pipeline.instance_walk`); here so that the
#: command line can list them without importing torch
INSTANCE_WALKS = ("auto", "local", "global")
#: number formats of the networks at prediction (:attr:`Params.network_precision`)
NETWORK_PRECISIONS = ("auto", "float32", "bfloat16")


class ParamError(ValueError):
    """A parameter out of range: ``name`` (the field), ``value`` and ``allowed`` (what it must be)."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        super().__init__(f"parameter {name}={value!r} must be {allowed}")
        self.name, self.value, self.allowed = name, value, allowed


def _is_int(v: Any, low: int, high: float = math.inf) -> bool:
    """An integer (not a bool) in [low, high]."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and low <= v <= high


def _is_real(v: Any) -> bool:
    """A finite number (not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_range(v: Any, kind: Callable[[Any], bool]) -> bool:
    """Two values ``low <= high``, each passing ``kind``."""
    return len(v) == 2 and all(kind(x) for x in v) and v[0] <= v[1]


def _check(obj: Any, checks: Sequence[tuple[str, Callable[[Any], bool], str]]) -> None:
    """Raise :class:`ParamError` for the first field of ``obj`` whose predicate fails (or raises)."""
    for name, ok, allowed in checks:
        value = getattr(obj, name)
        try:
            good = bool(ok(value))
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            raise ParamError(name, value, allowed)


@dataclass
class Params:
    """Inference parameters of IRNet, with the reference defaults.

    Distances are in stride-4 grid units unless said otherwise.
    """

    #: image scales of the multi-scale CAM (each with its horizontal flip)
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    #: CAM score above which a pixel is a confident foreground seed (``conf_fg_thres``)
    seed_fg_threshold: float = 0.30
    #: foreground seed thresholds of single classes, by class name, in place of
    #: ``seed_fg_threshold`` for them (our addition; 1.0: the class gives no foreground
    #: seeds). For classes whose CAMs are much sharper or vaguer than the others'
    seed_class_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
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
    #: number format of the networks' matrix operations at prediction: "float32";
    #: "bfloat16" (2-3x faster on processors with bfloat16 matrix units: Intel CPUs with
    #: AMX, NVIDIA GPUs from Ampere on; the maps change by up to about 5 %); "auto":
    #: bfloat16 where the device has such units and the preset is not "reference"
    network_precision: str = "auto"
    #: "irnet" (this project's behaviour) or "reference" (reproduce the
    #: reference implementation's outputs, e.g. its 512x512 zero padding of
    #: IRNet inputs, which changes GroupNorm statistics)
    preset: str = "irnet"

    def __post_init__(self) -> None:
        self.cam_scales = tuple(float(s) for s in self.cam_scales)
        if isinstance(self.seed_class_thresholds, dict):
            self.seed_class_thresholds = dict(self.seed_class_thresholds)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ParamError` (a ``ValueError``) naming the first parameter out of range."""
        unit = lambda v: _is_real(v) and 0.0 <= v <= 1.0  # noqa: E731
        positive = lambda v: _is_real(v) and v > 0  # noqa: E731
        whole = lambda v: _is_real(v) and float(v).is_integer()  # noqa: E731
        _check(self, [
            ("cam_scales", lambda v: len(v) > 0 and all(positive(s) for s in v), "positive scales"),
            ("seed_fg_threshold", unit, "in [0, 1]"),
            ("seed_class_thresholds", lambda v: isinstance(v, dict) and all(isinstance(k, str) and k and unit(t) for k, t in v.items()),
             "a mapping of class names to thresholds in [0, 1]"),
            ("seed_bg_threshold", unit, "in [0, 1]"),
            ("cam_eval_threshold", unit, "in [0, 1]"),
            ("use_crf", lambda v: isinstance(v, bool), "true or false"),
            ("radius", lambda v: whole(v) and 1 <= v <= 32, "an integer in [1, 32]"),
            ("beta", positive, "positive"),
            ("walk_steps", lambda v: whole(v) and v >= 0, ">= 0"),
            ("centroid_steps", lambda v: whole(v) and v >= 0, ">= 0"),
            ("cluster_threshold", positive, "positive"),
            ("instance_bg_threshold", unit, "in [0, 1]"),
            ("semantic_bg_threshold", unit, "in [0, 1]"),
            ("min_fragment_fraction", lambda v: _is_real(v) and 0.0 <= v < 1.0, "in [0, 1)"),
            ("instance_walk", lambda v: v in INSTANCE_WALKS, " or ".join(map(repr, INSTANCE_WALKS))),
            ("walk_tolerance", lambda v: _is_real(v) and 0.0 <= v < 1.0, "in [0, 1)"),
            ("tile_size", lambda v: whole(v) and v >= 64, ">= 64"),
            ("tile_overlap", lambda v: whole(v) and 0 <= v < int(self.tile_size) // 2, "in [0, tile_size/2)"),
            ("network_precision", lambda v: v in NETWORK_PRECISIONS, " or ".join(map(repr, NETWORK_PRECISIONS))),
            ("preset", lambda v: v in ("irnet", "reference"), "'irnet' or 'reference'"),
        ])  # fmt: skip

    def seed_fg_thresholds(self, names: Sequence[str]) -> float | tuple[float, ...]:
        """The foreground seed threshold of the CAMs of classes ``names``, in their order.

        ``seed_fg_threshold`` alone when no class among ``names`` has its own
        (:attr:`seed_class_thresholds`), else one threshold per name.
        """
        if not any(n in self.seed_class_thresholds for n in names):
            return self.seed_fg_threshold
        return tuple(float(self.seed_class_thresholds.get(n, self.seed_fg_threshold)) for n in names)

    def check_classes(self, classes: Sequence[str]) -> Params:
        """Raise :class:`ParamError` when :attr:`seed_class_thresholds` names a class not in ``classes``; else ``self``."""
        unknown = sorted(set(self.seed_class_thresholds) - set(classes))
        if unknown:
            raise ParamError("seed_class_thresholds", self.seed_class_thresholds,
                             f"keyed by the model's classes ({', '.join(classes)}), not {', '.join(unknown)}")  # fmt: skip
        return self

    def replace(self, **changes: Any) -> Params:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cam_scales"] = list(self.cam_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Params:
        """Build from a dict; unknown keys raise, missing keys take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Params:
        return cls.from_dict(json.loads(text))


#: IRNet's displacement heads (:class:`~napari_irnet.models.networks.IRNet`); here so
#: that the command line can list them without importing torch
DISPLACEMENT_HEADS = ("reference", "context")
#: the CAM network's output strides (:class:`~napari_irnet.models.networks.CAMNet`): 16 as in
#: the reference, or 8 for objects a few 16-pixel cells across (nuclei)
CAM_OUTPUT_STRIDES = (16, 8)


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
    #: its seeds span many objects (training.field_check.check_displacement_field; see BENCHMARKS.md)
    finetune_reset_displacement: bool = False
    #: bfloat16 mixed precision on CUDA and on CPUs with bfloat16 matrix units (Intel AMX);
    #: elsewhere float32 (training.loop.autocast)
    amp: bool = True
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.cam_resize_long = tuple(self.cam_resize_long)
        self.irn_rescale = tuple(self.irn_rescale)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ParamError` (a ``ValueError``) naming the first parameter out of range."""
        count = lambda v: _is_int(v, 1)  # noqa: E731
        rate = lambda v: _is_real(v) and v > 0  # noqa: E731
        weight = lambda v: _is_real(v) and v >= 0  # noqa: E731
        crop = lambda v: _is_int(v, 32)  # noqa: E731
        flag = lambda v: isinstance(v, bool)  # noqa: E731
        _check(self, [
            ("cam_epochs", count, "an integer >= 1"),
            ("cam_batch_size", count, "an integer >= 1"),
            ("cam_learning_rate", rate, "a positive number"),
            ("cam_crop_size", crop, "an integer >= 32"),
            ("cam_resize_long", lambda v: _is_range(v, lambda x: _is_int(x, 1)), "two integers 1 <= low <= high"),
            ("irn_epochs", count, "an integer >= 1"),
            ("irn_batch_size", count, "an integer >= 1"),
            ("irn_learning_rate", rate, "a positive number"),
            ("irn_crop_size", crop, "an integer >= 32"),
            ("irn_rescale", lambda v: _is_range(v, rate), "two positive numbers low <= high"),
            ("train_radius", lambda v: _is_int(v, 1, 32), "an integer in [1, 32]"),
            ("weight_decay", weight, ">= 0"),
            ("momentum", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
            ("poly_power", weight, ">= 0"),
            ("new_layer_lr_mult", rate, "a positive number"),
            ("finetune_epochs", count, "an integer >= 1"),
            ("finetune_learning_rate", rate, "a positive number"),
            ("correction_weight", count, "an integer >= 1"),
            ("finetune_cam", flag, "true or false"),
            ("centroid_loss_weight", weight, ">= 0"),
            ("weak_displacement_weight", lambda v: _is_real(v) and 0 <= v <= 1, "in [0, 1]"),
            ("finetune_reset_displacement", flag, "true or false"),
            ("amp", flag, "true or false"),
            ("seed", lambda v: _is_int(v, 0), "an integer >= 0"),
            ("num_workers", lambda v: _is_int(v, 0), "an integer >= 0"),
        ])  # fmt: skip

    def replace(self, **changes: Any) -> TrainParams:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cam_resize_long"] = list(self.cam_resize_long)
        d["irn_rescale"] = list(self.irn_rescale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)
