"""The backbone registry: torchvision-style builders, and the command line's --backbone choices read from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_irnet.models import registry
from napari_irnet.models.registry import backbone_names, build_backbone, register_backbone, tiny


def _backbone_choices(parser) -> tuple[str, ...]:
    train_cam = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train-cam")[1]
    return tuple(next(a for a in train_cam._actions if a.dest == "backbone").choices)


def test_the_command_line_offers_the_registered_backbones(monkeypatch):
    from napari_irnet.cli.parser import build_parser

    assert backbone_names() == ("resnet50", "resnet18", "tiny", "efficientnet_lite0")
    assert _backbone_choices(build_parser()) == backbone_names()
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))  # the registration ends with the test
    register_backbone("tiny_copy", lambda weights=None, frozen_bn=None: tiny(weights, frozen_bn))
    parser = build_parser()
    assert "tiny_copy" in _backbone_choices(parser)
    args = parser.parse_args(["train-cam", "--images", "i", "--labels", "l.csv", "--out", "m.pt", "--backbone", "tiny_copy"])
    assert args.backbone == "tiny_copy"


def test_a_registered_backbone_builds_models_and_checkpoints(monkeypatch, tmp_path):
    from napari_irnet.models.checkpoint import load_checkpoint, new_model, save_checkpoint

    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    built = []
    register_backbone("tiny_copy", lambda weights=None, frozen_bn=None: built.append(weights) or tiny(weights, frozen_bn))
    model = new_model(["a", "b"], "tiny_copy", None)
    assert model.backbone == "tiny_copy" and built == [None, None]  # both networks' backbones
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert back.backbone == "tiny_copy" and len(built) == 4


def test_builders_take_torchvision_style_weights():
    backbone = build_backbone("tiny", weights=None)
    assert backbone.name == "tiny" and len(backbone.channels) == 5 and not backbone.frozen_bn
    assert tiny(frozen_bn=True).frozen_bn
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("tiny", weights="imagenet")
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'; choose one of resnet50, resnet18, tiny, efficientnet_lite0"):
        build_backbone("resnet9")
    with pytest.raises(ValueError, match="a name and a builder"):
        register_backbone("x", None)


def test_the_registry_lists_its_names_without_torch():
    code = "import sys\nfrom napari_irnet.cli.parser import build_parser\nbuild_parser()\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
