"""Checkpoints: one file with both networks, the parameters, classes and history.

A checkpoint is a ``torch.save`` dict::

    {"format": "napari-irnet", "version": 1,
     "classes": [...], "backbone": "resnet50", "displacement_head": "reference",
     "cam_output_stride": 16,
     "params": Params.to_dict(), "train_params": TrainParams.to_dict(),
     "history": [...], "cam_state": {...} | None, "irn_state": {...} | None}

:func:`import_reference` converts the two state dicts written by the reference
implementation (jiwoon-ahn/irn: ``res50_cam.pth``, ``res50_irn.pth``), whose
keys carry aliases (``resnet50.*``, ``stage*.*`` and ``backbone.*`` name the
same tensors; ``edge_layers.*``/``dp_layers.*`` alias the heads) and extra
buffers (``path_indices*``, ``disp_target``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..params import CAM_OUTPUT_STRIDES, DISPLACEMENT_HEADS, Params, TrainParams
from .networks import CAMNet, IRNet
from .registry import backbone_names, build_backbone
from .torch_files import CheckpointError, plain_data, safe_torch_load, write_torch_file

FORMAT = "napari-irnet"
VERSION = 1

#: the 20 PASCAL VOC classes in the reference's order
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


_CAM_STAGES = frozenset({"cam", "cam_masks"})
_IRN_STAGES = frozenset({"irn", "finetune"})
#: what trains each network, for messages
_TRAIN_COMMAND = {
    "cam": "napari-irnet train-cam --images IMAGES --labels LABELS --out MODEL.pt",
    "irn": "napari-irnet train-irn --checkpoint {path} --images IMAGES --labels LABELS --out MODEL.pt",
}


@dataclass
class Model:
    """Both networks of IRNet with what is needed to use and resume them."""

    classes: list[str]
    backbone: str
    cam: CAMNet | None = None
    irn: IRNet | None = None
    params: Params = field(default_factory=Params)
    train_params: TrainParams = field(default_factory=TrainParams)
    history: list[dict] = field(default_factory=list)
    #: where the backbones started: "imagenet", "none" (random) or "file"
    backbone_init: str = "imagenet"
    #: IRNet's last displacement layers (:data:`~napari_irnet.params.DISPLACEMENT_HEADS`),
    #: those :func:`new_irnet` builds and a loaded ``irn`` has
    displacement_head: str = "reference"
    #: the CAM network's output stride (:data:`~napari_irnet.params.CAM_OUTPUT_STRIDES`), that of
    #: the CAM network :func:`new_model` builds and a loaded ``cam`` has
    cam_output_stride: int = 16
    #: the file this model was read from (for messages; not saved)
    path: Path | None = None

    def untrained_networks(self) -> list[str]:
        """The networks (``"cam"``, ``"irn"``) this model lacks or never trained.

        A network counts as untrained when it is missing, or, for IRNet, when
        the history shows the CAM network trained and IRNet never (what
        ``train-cam`` writes: an IRNet with random heads). A model without
        history (imported, built in code) is taken as it is.
        """
        stages = {h.get("stage") for h in self.history if isinstance(h, dict)}
        missing = [] if self.cam is not None else ["cam"]
        if self.irn is None or (stages & _CAM_STAGES and not stages & _IRN_STAGES):
            missing.append("irn")
        return missing

    def require(self, *networks: str, task: str = "predict") -> None:
        """Raise :class:`CheckpointError` unless each of ``networks`` is present and trained.

        The message names the checkpoint, the missing network and the
        command that trains it.
        """
        missing = [n for n in self.untrained_networks() if n in networks]
        if not missing:
            return
        what = "the model" if self.path is None else f"{self.path}: this checkpoint"
        path = self.path if self.path is not None else "MODEL.pt"
        if missing[0] == "cam":
            reason = "has no CAM network"
        elif self.irn is None:
            reason = "has no IRNet (only the CAM network)"
        else:
            reason = "has a trained CAM network but its IRNet was never trained"
        raise CheckpointError(
            f"{what} {reason}, and {task} needs it: train it with `{_TRAIN_COMMAND[missing[0]].format(path=path)}`"
        )

    @property
    def frozen_bn(self) -> bool:
        """Batch norm is frozen unless the backbones were trained from scratch."""
        return self.backbone_init != "none"

    def class_ids(self, names: list[str]) -> list[int]:
        """0-based ids of class names, with a clear error for unknown names."""
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; this model knows {self.classes}")
        return [self.classes.index(n) for n in names]


def new_model(
    classes: list[str],
    backbone: str = "resnet50",
    weights: str | Path | None = None,
    irn_weights: str | Path | None = None,
    displacement_head: str = "reference",
    cam_output_stride: int = 16,
) -> Model:
    """Fresh CAM and IRNet networks; both backbones start from ``weights`` unless ``irn_weights`` is given.

    ``displacement_head``: IRNet's last displacement layers, ``"reference"``
    or ``"context"`` (:func:`~napari_irnet.models.networks.IRNet`).
    ``cam_output_stride``: 16 (the reference) or 8, the CAM network's grid
    (:class:`~napari_irnet.models.networks.CAMNet`).
    """
    init = "none" if weights is None else ("imagenet" if weights == "imagenet" else "file")
    frozen = init != "none"
    cam = CAMNet(build_backbone(backbone, weights, frozen), len(classes), not frozen, cam_output_stride)
    irn = IRNet(build_backbone(backbone, irn_weights if irn_weights is not None else weights, frozen), displacement_head)
    return Model(list(classes), backbone, cam, irn, backbone_init=init, displacement_head=displacement_head,
                 cam_output_stride=cam_output_stride)  # fmt: skip


def new_irnet(model: Model, source: str | Path = "cam") -> IRNet:
    """A fresh IRNet for ``model`` whose frozen backbone comes from ``source``.

    ``source`` is ``"cam"`` (a copy of the trained CAM backbone), ``"imagenet"``,
    ``"none"`` (random) or the path of a torchvision-layout weights file. The
    reference uses ImageNet weights; for backbones without them the CAM
    backbone is the better choice. The displacement head is
    ``model.displacement_head``.
    """
    if source == "cam":
        if model.cam is None:
            raise ValueError("source 'cam' needs a model with a CAM network")
        backbone = build_backbone(model.backbone, frozen_bn=model.frozen_bn)
        backbone.load_state_dict(model.cam.backbone.state_dict())
    else:
        backbone = build_backbone(model.backbone, None if source == "none" else source, frozen_bn=model.frozen_bn)
    return IRNet(backbone, model.displacement_head)


def model_fingerprint(model: Model) -> str:
    """SHA-256 of a model's classes, backbone, CAM output stride and weights (for a model that is not a file)."""
    layout = [model.classes, model.backbone]
    stride = model.cam.output_stride if model.cam is not None else model.cam_output_stride
    if stride != 16:  # the same weights give other CAMs at another stride
        layout.append(stride)
    digest = hashlib.sha256(json.dumps(layout).encode())
    for net in (model.cam, model.irn):
        if net is None:
            digest.update(b"none")
            continue
        for key, tensor in net.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(model: Model, path: str | Path) -> Path:
    """Write ``model`` to ``path`` atomically (:func:`write_torch_file`; the old file stays intact on failure)."""
    path = Path(path)
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "classes": [str(c) for c in model.classes],
        "backbone": str(model.backbone),
        "params": model.params.to_dict(),
        "train_params": model.train_params.to_dict(),
        "history": plain_data(list(model.history), "the model's history"),
        "backbone_init": model.backbone_init,
        # the network's own head when there is one: the field only says what new_irnet builds
        "displacement_head": model.irn.displacement_head if model.irn is not None else model.displacement_head,
        "cam_output_stride": model.cam.output_stride if model.cam is not None else model.cam_output_stride,
        "cam_state": model.cam.state_dict() if model.cam is not None else None,
        "irn_state": model.irn.state_dict() if model.irn is not None else None,
    }
    write_torch_file(obj, path)
    return path


def _load_state(net: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CheckpointError(f"{path}: the {what} weights do not fit the network ({first})") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the network "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )


def _model_fields(obj: dict, path: Path) -> Model:
    """A :class:`Model` without networks from a checkpoint dict, every field checked."""
    version = obj.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: damaged checkpoint (version {version!r})")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is newer than this napari-irnet reads ({VERSION})")
    classes, backbone = obj.get("classes"), obj.get("backbone")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: damaged checkpoint (its class names are {classes!r}, not a list of names)")
    if backbone not in backbone_names():
        raise CheckpointError(f"{path}: unknown backbone {backbone!r} (this napari-irnet knows {', '.join(backbone_names())})")
    history = obj.get("history", [])
    if not isinstance(history, list):
        raise CheckpointError(f"{path}: damaged checkpoint (its history is not a list)")
    try:
        params = Params.from_dict(obj["params"])
        train_params = TrainParams.from_dict(obj["train_params"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: bad parameters in checkpoint ({exc})") from exc
    # files written before the choice existed have the reference head
    head = obj.get("displacement_head", "reference")
    if head not in DISPLACEMENT_HEADS:
        raise CheckpointError(f"{path}: unknown displacement head {head!r} (this napari-irnet knows {', '.join(DISPLACEMENT_HEADS)})")
    # files written before the choice existed have the reference's stride 16
    stride = obj.get("cam_output_stride", 16)
    if stride not in CAM_OUTPUT_STRIDES or isinstance(stride, bool):
        raise CheckpointError(f"{path}: unknown CAM output stride {stride!r} (this napari-irnet knows {', '.join(map(str, CAM_OUTPUT_STRIDES))})")
    init = obj.get("backbone_init", "imagenet")
    return Model(list(classes), backbone, params=params, train_params=train_params, history=history,
                 backbone_init=init if isinstance(init, str) else "imagenet", displacement_head=head,
                 cam_output_stride=stride, path=path)  # fmt: skip


def load_checkpoint(path: str | Path, classes: list[str] | None = None, device: str = "cpu") -> Model:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    classes : list of str, optional
        When given, the checkpoint must know every one of these classes.

    Raises
    ------
    CheckpointError
        For a missing, corrupt or foreign file, or mismatching classes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    obj = safe_torch_load(path, "checkpoint", device)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and any(str(k).startswith(("resnet50.", "fc_edge", "classifier")) for k in obj):
            hint = "; it looks like a reference-implementation state dict: use `napari-irnet import-reference`"
        raise CheckpointError(f"{path}: not a napari-irnet checkpoint{hint}")
    model = _model_fields(obj, path)
    if classes is not None:
        unknown = [c for c in classes if c not in model.classes]
        if unknown:
            raise CheckpointError(f"{path}: trained for classes {model.classes}, which lack {unknown}")
    for key in ("cam_state", "irn_state"):
        state = obj.get(key)
        if state is not None and not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise CheckpointError(f"{path}: damaged checkpoint ({key} is not a dict of tensors)")
    try:
        if obj.get("cam_state") is not None:
            backbone = build_backbone(model.backbone, frozen_bn=model.frozen_bn)
            model.cam = CAMNet(backbone, len(model.classes), not model.frozen_bn, model.cam_output_stride)
            _load_state(model.cam, obj["cam_state"], path, "CAM")
        if obj.get("irn_state") is not None:
            model.irn = IRNet(build_backbone(model.backbone, frozen_bn=model.frozen_bn), model.displacement_head)
            _load_state(model.irn, obj["irn_state"], path, "IRNet")
    except ImportError as exc:  # a backbone whose package is not installed: the message says which
        raise CheckpointError(f"{path}: {exc}") from exc
    return model


def _reference_state(path: Path, keep: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = safe_torch_load(path, "state dict")
    if not isinstance(state, dict) or not any(k.startswith("resnet50.") for k in state):
        raise CheckpointError(f"{path}: not a reference-implementation state dict (no 'resnet50.*' keys)")
    out = {}
    for key, value in state.items():
        if key.startswith("resnet50."):
            out["backbone." + key[len("resnet50."):]] = value
        elif key.startswith(keep):
            # the first reference version kept the mean shift as a BatchNorm (running_var etc.)
            if key.startswith("fc_dp7.4.") and not key.endswith("running_mean"):
                continue
            out[key] = value
    return out


def import_reference(
    cam_path: str | Path | None,
    irn_path: str | Path | None,
    classes: list[str] | tuple[str, ...] = VOC_CLASSES,
) -> Model:
    """Build a :class:`Model` from the reference's ``res50_cam.pth`` / ``res50_irn.pth``.

    The parameters get ``preset="reference"`` so inference reproduces the
    reference's outputs (its 512x512 zero padding of IRNet inputs included).
    """
    model = Model(list(classes), "resnet50", params=Params(preset="reference"))
    if cam_path is not None:
        cam_path = Path(cam_path)
        state = _reference_state(cam_path, ("classifier.",))
        n = state.get("classifier.weight", torch.empty(0)).shape[0]
        if n != len(classes):
            raise CheckpointError(f"{cam_path}: classifier has {n} classes but {len(classes)} class names were given")
        model.cam = CAMNet(build_backbone("resnet50", frozen_bn=True), len(classes))
        _load_state(model.cam, state, cam_path, "CAM")
    if irn_path is not None:
        irn_path = Path(irn_path)
        model.irn = IRNet(build_backbone("resnet50", frozen_bn=True))
        _load_state(model.irn, _reference_state(irn_path, ("fc_edge", "fc_dp")), irn_path, "IRNet")
    return model
