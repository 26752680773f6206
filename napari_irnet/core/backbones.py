"""Feature backbones at output stride 16, batch norm frozen when pretrained.

All backbones return five feature maps, as IRNet uses them (Ahn et al. 2019,
and the reference implementation's ``net/resnet50.py``):

======  ================================  ======
level   modules                           stride
======  ================================  ======
x1      conv1 + bn1 + relu + maxpool      4
x2      layer1                            4
x3      layer2                            8
x4      layer3                            16
x5      layer4 (stride 1, no dilation)    16
======  ================================  ======

Builders follow torchvision's convention: a ``weights`` argument that is
``None`` (random initialisation), ``"imagenet"`` (torchvision's ImageNet
weights, downloaded on first use where a network is available) or the path of a
local state-dict file in torchvision's key layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import resnet

BACKBONES = ("resnet50", "resnet18", "tiny")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always uses its running statistics and never trains.

    Same arithmetic as the reference's ``FixedBatchNorm`` (``F.batch_norm``
    with ``training=False``) and the same state-dict keys as ``BatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d carrying its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.load_state_dict(child.state_dict())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
    return module


def _last_stage_stride_one(net: resnet.ResNet) -> None:
    """Make layer4 keep the resolution (stride 1) without dilation."""
    block = net.layer4[0]
    conv = block.conv2 if isinstance(block, resnet.Bottleneck) else block.conv1
    conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _tiny_resnet() -> resnet.ResNet:
    """A small ResNet (one BasicBlock per stage, widths 16-32-64-128) for CPUs and tests."""
    net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])
    widths = (16, 16, 32, 64, 128)
    net.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    inplanes = widths[0]
    for i, width in enumerate(widths[1:], start=1):
        stride = 1 if i in (1, 4) else 2
        downsample = None
        if stride != 1 or inplanes != width:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )
        setattr(net, f"layer{i}", nn.Sequential(resnet.BasicBlock(inplanes, width, stride, downsample)))
        inplanes = width
    net.fc = nn.Linear(inplanes, 1000)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path``, with a clear error for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt files
        raise ValueError(f"{path}: not a readable torch weights file ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return obj


class Backbone(nn.Module):
    """A ResNet trunk returning the five feature maps x1..x5 (see module docstring).

    Parameters
    ----------
    name : {"resnet50", "resnet18", "tiny"}
    weights : None, "imagenet" or path
        Initial weights (torchvision key layout for files).
    frozen_bn : bool, optional
        Freeze batch-norm statistics (the reference's ``FixedBatchNorm``).
        Default: frozen for pretrained weights; a backbone trained from scratch
        keeps ordinary batch norm, without which it barely learns.
    """

    def __init__(self, name: str = "resnet50", weights: str | Path | None = None, frozen_bn: bool | None = None):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        self.name = name
        if name == "tiny":
            if weights == "imagenet":
                raise ValueError("the tiny backbone has no ImageNet weights; use weights=None or a file")
            net = _tiny_resnet()
        else:
            builder = {"resnet50": resnet.resnet50, "resnet18": resnet.resnet18}[name]
            enum = {"resnet50": resnet.ResNet50_Weights, "resnet18": resnet.ResNet18_Weights}[name]
            # IMAGENET1K_V1 is the checkpoint the reference implementation starts from
            net = builder(weights=enum.IMAGENET1K_V1 if weights == "imagenet" else None)
        if weights is not None and weights != "imagenet":
            state = load_state_dict_file(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"{weights}: does not fit backbone {name!r} "
                    f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
                )
        _last_stage_stride_one(net)
        net.fc = nn.Identity()
        self.frozen_bn = weights is not None if frozen_bn is None else frozen_bn
        if self.frozen_bn:
            _freeze_batchnorm(net)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = tuple(self._channels())

    def _channels(self):
        def out_ch(layer):
            block = layer[-1]
            return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels

        return [self.conv1.out_channels] + [out_ch(getattr(self, f"layer{i}")) for i in range(1, 5)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W) normalised image -> [x1, x2, x3, x4, x5]."""
        x1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        return [x1, x2, x3, x4, x5]


def build_backbone(name: str = "resnet50", weights: str | Path | None = None, frozen_bn: bool | None = None) -> Backbone:
    """Build a stride-16 backbone (see :class:`Backbone`)."""
    return Backbone(name, weights, frozen_bn)
