"""Deterministic ResNet-50 weights for the reference-equivalence fixtures.

Both the golden-fixture generator (``make_golden.py``, which runs the reference
implementation) and the tests (``tests/test_reference_equivalence.py``) build
the same CAM network and IRNet from :func:`golden_model`, so the fixture holds
only the reference's outputs, not the 2 x 25 M weights.

Every parameter and buffer, in sorted name order, is filled from its own
``torch.Generator`` seeded with ``seed + index``: convolutions He-scaled
(``randn * sqrt(2 / fan_in)``), norm weights near 1, small head biases,
positive running variances. The backbones' batch-norm biases and running means
are 0, so that a zero input gives zero features: the reference pads IRNet's
input with zeros to 512 x 512, and on these small images the padding is most
of the canvas; with non-zero shifts the padding's constant features dominated
the heads' GroupNorm statistics, whose cancellation turned float noise of
1e-7 into 1e-4 on the boundary. A few scales make every stage of the pipeline
non-trivial on small synthetic images: the last layers' rows have zero mean
(so a CAM is zero on part of the image and seeds, ignore pixels and background
all occur), the boundary logits spread over both sides of 0, and the
displacement field is a few grid cells long with weak regions (several
clusters and instances).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_irnet.models.checkpoint import VOC_CLASSES, Model
from napari_irnet.models.networks import CAMNet, IRNet
from napari_irnet.models.registry import build_backbone
from napari_irnet.params import Params

CAM_SEED = 1000
IRN_SEED = 2000
#: per-name multipliers: the displacement field a few grid cells long
SCALES = {"fc_dp7.3.weight": 2.5}
#: last layers whose rows get zero mean: their inputs are ReLU'd, and without it a
#: shared offset dominates (a CAM positive everywhere, a displacement field that
#: points one way everywhere)
ZERO_MEAN = ("classifier.weight", "fc_edge6.weight", "fc_dp7.3.weight")
#: centres of the boundary bias and of the mean shift (subtracted from the displacement
#: (dy, dx) in eval mode, grid units), to bring the boundary logits and the field around 0
OFFSETS = {"fc_edge6.bias": torch.tensor([-4.5]), "fc_dp7.4.running_mean": torch.tensor([-1.0, -6.75])}


def _values(name: str, shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    if name.startswith("backbone.") and name.endswith(("running_mean", "bias")):
        return torch.zeros(shape)  # zero input, zero features: see the module docstring
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    if name in OFFSETS:
        return OFFSETS[name] + 0.1 * noise
    if len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        w = noise * math.sqrt(2.0 / fan_in)
        if name in ZERO_MEAN:
            w = w - w.mean(dim=1, keepdim=True)
        return SCALES.get(name, 1.0) * w
    if name.endswith("weight"):  # batch and group norm scales
        return 1.0 + 0.1 * noise
    return SCALES.get(name, 1.0) * 0.1 * noise  # biases, running means


@torch.no_grad()
def fill_deterministic(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter and buffer of ``net`` (except batch counters), in sorted name order."""
    tensors = dict(net.named_parameters())
    tensors.update(net.named_buffers())
    for index, name in enumerate(sorted(tensors)):
        t = tensors[name]
        if not t.is_floating_point():
            continue
        g = torch.Generator().manual_seed(seed + index)
        t.copy_(_values(name, t.shape, g))
    return net


def fingerprint(net: torch.nn.Module) -> np.ndarray:
    """(n, 2) float64: sum and sum of squares of every floating tensor of ``net``, in sorted name order.

    Stored with the fixtures, so that a change of the weights (e.g. of torch's
    random generator) shows as itself rather than as a failing comparison.
    """
    state = net.state_dict()
    rows = [(t.double().sum().item(), t.double().square().sum().item()) for k, t in sorted(state.items()) if t.is_floating_point()]
    return np.array(rows, np.float64)


def golden_model() -> Model:
    """The CAM network and IRNet (ResNet-50, 20 VOC classes) of the golden fixtures, ``preset="reference"``."""
    cam = CAMNet(build_backbone("resnet50", frozen_bn=True), len(VOC_CLASSES))
    irn = IRNet(build_backbone("resnet50", frozen_bn=True))
    fill_deterministic(cam, CAM_SEED)
    fill_deterministic(irn, IRN_SEED)
    return Model(list(VOC_CLASSES), "resnet50", cam.eval(), irn.eval(), params=Params(preset="reference"))
