"""The two networks of IRNet: the CAM classifier and the boundary/displacement net.

Both sit on a :class:`~napari_irnet.models.backbones.Backbone`. Module names and
layouts of the heads (``classifier``, ``fc_edge1..6``, ``fc_dp1..7``) follow
the reference implementation (jiwoon-ahn/irn, ``net/resnet50_cam.py`` and
``net/resnet50_irn.py``) so that its checkpoints load into these classes
(see :mod:`napari_irnet.models.checkpoint`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import CAM_OUTPUT_STRIDES, DISPLACEMENT_HEADS
from .backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone


def network_layout(batch: torch.Tensor) -> torch.Tensor:
    """``batch`` (N, 3, H, W) in the memory layout the networks run fastest in.

    Channels-last on the CPU: oneDNN's convolutions follow the input's layout,
    and give the same values to float rounding. Measured on the 2-core CPU
    with the demo model's EfficientNet-Lite0: the CAM network on a pair of
    1024² tiles 1.39 s → 1.02 s, IRNet 2.27 s → 1.54 s; a training step on 16
    crops of 256² 1.2× (CAM) and 1.6× (IRNet) faster. Other devices (not
    measured here) keep the default layout.
    """
    if batch.device.type == "cpu":
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) uint8/float 0..255 RGB -> ImageNet-normalised float32."""
    x = image.float() / 255.0
    shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
    return (x - mean) / std


class CAMNet(nn.Module):
    """Multi-label classifier whose 1x1 classifier gives class activation maps.

    With a pretrained backbone, conv1, layer1 and layer2 receive no gradient
    (the reference detaches after layer2); a backbone trained from scratch
    (``train_all_layers=True``) trains every layer. Batch norm is frozen
    everywhere. ``output_stride`` 8 keeps the backbone's stride-16 stage at
    stride 8 (``output_stride_8()``): CAM cells of 8 pixels, the same
    weights, 2.5 to 4 times the training time per step (BENCHMARKS.md).
    """

    def __init__(self, backbone: Backbone, num_classes: int, train_all_layers: bool = False, output_stride: int = 16):
        super().__init__()
        if output_stride not in CAM_OUTPUT_STRIDES:
            raise ValueError(f"CAM output stride {output_stride!r}: choose one of {', '.join(map(str, CAM_OUTPUT_STRIDES))}")
        if output_stride == 8:
            to_8 = getattr(backbone, "output_stride_8", None)
            if to_8 is None:
                raise ValueError(f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} cannot run at output stride 8 (it has no output_stride_8())")
            to_8()
        self.backbone = backbone
        self.num_classes = num_classes
        self.train_all_layers = train_all_layers
        self.output_stride = output_stride
        self.classifier = nn.Conv2d(backbone.channels[-1], num_classes, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer2(b.layer1(x))
        if not self.train_all_layers:
            x = x.detach()
        return b.layer4(b.layer3(x))

    def forward(self, x: torch.Tensor, pixels: bool = False) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> class logits (B, num_classes).

        With ``pixels`` the logits of every feature-grid cell instead,
        (B, num_classes, H/s, W/s) with s = ``output_stride``: the CAMs
        before the ReLU, for training from class maps.
        """
        f = self.features(x)
        if pixels:
            return self.classifier(f)
        return self.classifier(F.adaptive_avg_pool2d(f, 1)).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> ReLU'd CAMs (B, num_classes, H/s, W/s), s = ``output_stride``."""
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, new-layer parameters)."""
        b = self.backbone
        modules = (b.layer3, b.layer4)
        if self.train_all_layers:
            modules = (b.conv1, b.layer1, b.layer2) + modules
        trained = [p for m in modules for p in m.parameters()]
        return trained, list(self.classifier.parameters())


class MeanShift(nn.Module):
    """Subtracts the mean displacement in eval mode (identity in training)."""

    def __init__(self, num_features: int = 2):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def _head(cin: int, cout: int, groups: int, up: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Sequential):
    """``x + layers(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _displacement_output(head: str) -> nn.Sequential:
    """The last displacement layers (``fc_dp7``): 448 fused channels -> (dy, dx).

    ``"reference"``: the reference's 1x1 convolutions, so each cell's vector
    comes from its own fused features only. ``"context"`` (our addition):
    448 -> 64 channels, then three residual 3x3 convolutions dilated 1, 2
    and 4, so each vector also sees the cells up to 7 grid cells (28 pixels)
    away; for objects a few grid cells across (nuclei), where the vector to
    the centre depends on where the object's edges are around the cell. The
    residual form keeps the direct path of the reference head: a plain stack
    of the same layers stalled under SGD on CoNSeP (see BENCHMARKS.md).
    """
    if head == "reference":
        return nn.Sequential(
            nn.Conv2d(448, 256, 1, bias=False),
            nn.GroupNorm(16, 256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 2, 1, bias=False),
            MeanShift(2),
        )
    if head == "context":
        layers: list[nn.Module] = [nn.Conv2d(448, 64, 1, bias=False), nn.GroupNorm(8, 64), nn.ReLU(inplace=True)]
        for dilation in (1, 2, 4):
            layers.append(
                _Residual(
                    nn.Conv2d(64, 64, 3, padding=dilation, dilation=dilation, bias=False), nn.GroupNorm(8, 64), nn.ReLU()
                )
            )
        return nn.Sequential(*layers, nn.Conv2d(64, 2, 1, bias=False), MeanShift(2))
    raise ValueError(f"unknown displacement head {head!r}; choose one of {', '.join(DISPLACEMENT_HEADS)}")


class IRNet(nn.Module):
    """Boundary and displacement heads on a frozen backbone, both at stride 4.

    ``forward`` returns boundary logits (B, 1, h, w) and the displacement
    field (B, 2, h, w) in stride-4 grid units, channel 0 = dy, 1 = dx, with
    h = ceil(H/4), w = ceil(W/4). ``displacement_head`` picks the last
    displacement layers (:data:`~napari_irnet.params.DISPLACEMENT_HEADS`, see
    :func:`_displacement_output`); only ``"reference"`` loads the reference's
    weights.
    """

    def __init__(self, backbone: Backbone, displacement_head: str = "reference"):
        super().__init__()
        self.backbone = backbone
        self.displacement_head = displacement_head
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        c1, c2, c3, c4, c5 = backbone.channels
        self.fc_edge1 = _head(c1, 32, 4)
        self.fc_edge2 = _head(c2, 32, 4)
        self.fc_edge3 = _head(c3, 32, 4, up=2)
        self.fc_edge4 = _head(c4, 32, 4, up=4)
        self.fc_edge5 = _head(c5, 32, 4, up=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = _head(c1, 64, 8)
        self.fc_dp2 = _head(c2, 128, 16)
        self.fc_dp3 = _head(c3, 256, 16)
        self.fc_dp4 = _head(c4, 256, 16, up=2)
        self.fc_dp5 = _head(c5, 256, 16, up=2)
        self.fc_dp6 = _head(768, 256, 16, up=2)
        self.fc_dp7 = _displacement_output(displacement_head)

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x1, x2, x3, x4, x5 = self.backbone(x)
        h, w = x2.shape[-2:]
        edges = [self.fc_edge1(x1), self.fc_edge2(x2)]
        edges += [f(xi)[..., :h, :w] for f, xi in ((self.fc_edge3, x3), (self.fc_edge4, x4), (self.fc_edge5, x5))]
        edge = self.fc_edge6(torch.cat(edges, dim=1))

        dp3 = self.fc_dp3(x3)
        h3, w3 = dp3.shape[-2:]
        dp4 = self.fc_dp4(x4)[..., :h3, :w3]
        dp5 = self.fc_dp5(x5)[..., :h3, :w3]
        dp6 = self.fc_dp6(torch.cat([dp3, dp4, dp5], dim=1))[..., :h, :w]
        disp = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp6], dim=1))
        return edge, disp

    def reset_displacement_head(self) -> None:
        """Initialise the displacement branch (``fc_dp1`` to ``fc_dp7``) afresh, its mean shift at 0."""
        for i in range(1, 8):
            for module in getattr(self, f"fc_dp{i}").modules():
                if isinstance(module, (nn.Conv2d, nn.GroupNorm)):
                    module.reset_parameters()
        self.mean_shift.running_mean.zero_()

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary-head parameters, displacement-head parameters)."""
        edge = [p for i in range(1, 7) for p in getattr(self, f"fc_edge{i}").parameters()]
        disp = [p for i in range(1, 8) for p in getattr(self, f"fc_dp{i}").parameters()]
        return edge, disp

    @property
    def mean_shift(self) -> MeanShift:
        return self.fc_dp7[-1]
