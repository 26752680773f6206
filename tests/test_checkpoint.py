"""Checkpoints: round trip, clear rejections, and reference-implementation imports."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_irnet.models.checkpoint import import_reference, load_checkpoint, new_model, save_checkpoint
from napari_irnet.models.torch_files import CheckpointError
from napari_irnet.params import Params
from napari_irnet.pipeline.inference import compute_cams, compute_irnet


def _perturb(model):
    # non-trivial buffers so a missed key would show
    g = torch.Generator().manual_seed(0)
    for net in (model.cam, model.irn):
        for name, buf in net.named_buffers():
            if "running_var" in name:
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif "running_mean" in name:
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
    return model


def test_round_trip_keeps_weights_params_and_history(tmp_path):
    model = _perturb(new_model(["a", "b"], "tiny"))
    model.params = Params(beta=7.0, walk_steps=64)
    model.history.append({"stage": "cam", "steps": 3})
    path = save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(path)
    assert back.classes == ["a", "b"] and back.backbone == "tiny"
    assert back.params == model.params and back.history == model.history
    for a, b in ((model.cam, back.cam), (model.irn, back.irn)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_rejects_other_classes_corrupt_and_foreign_files(tmp_path):
    path = save_checkpoint(new_model(["a", "b"], "tiny"), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"m\.pt.*lack \['c'\]"):
        load_checkpoint(path, classes=["a", "c"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"resnet50.conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="import-reference"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(new_model(["a"], "tiny"), tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(new_model(["a"], "tiny"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


_CAM_STAGES = {"conv1": "stage1.0", "bn1": "stage1.1", "layer1": "stage1.4", "layer2": "stage2.0", "layer3": "stage3.0", "layer4": "stage4.0"}
_IRN_STAGES = {"conv1": "stage1.0", "bn1": "stage1.1", "layer1": "stage2.0", "layer2": "stage3.0", "layer3": "stage4.0", "layer4": "stage5.0"}


def _reference_style(state: dict, stages: dict, extra: dict) -> dict:
    """Our state dict rewritten with the reference's key aliases and extra buffers."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            rest = key[len("backbone."):]
            top, _, tail = rest.partition(".")
            out["resnet50." + rest] = value
            out[stages[top] + "." + tail] = value
            stage, _, inner = stages[top].partition(".")
            out[f"backbone.{int(stage[len('stage'):]) - 1}.{inner}.{tail}"] = value
        else:
            out[key] = value
    out.update(extra)
    return out


def test_import_reference_state_dicts_reproduces_outputs(tmp_path):
    ours = _perturb(new_model([f"c{i}" for i in range(20)], "resnet50"))
    cam_state = _reference_style(ours.cam.state_dict(), _CAM_STAGES, {"newly_added.0.weight": ours.cam.classifier.weight})
    irn_extra = {"edge_layers.0.0.weight": ours.irn.fc_edge1[0].weight, "path_indices0": torch.zeros(3, 2, dtype=torch.long), "disp_target": torch.zeros(1, 2, 152, 1)}
    irn_state = _reference_style(ours.irn.state_dict(), _IRN_STAGES, irn_extra)
    torch.save(cam_state, tmp_path / "res50_cam.pth")
    torch.save(irn_state, tmp_path / "res50_irn.pth")
    imported = import_reference(tmp_path / "res50_cam.pth", tmp_path / "res50_irn.pth", ours.classes)
    assert imported.params.preset == "reference"
    img = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    p = Params(cam_scales=(1.0,), preset="reference")
    a, b = compute_cams(ours.cam, img, [3, 5], p, "cpu"), compute_cams(imported.cam, img, [3, 5], p, "cpu")
    assert torch.equal(a.high_res, b.high_res)
    a, b = compute_irnet(ours.irn, img, p, "cpu"), compute_irnet(imported.irn, img, p, "cpu")
    assert torch.equal(a.boundary, b.boundary) and torch.equal(a.displacement, b.displacement)


def test_reference_preset_pads_irnet_input_to_512():
    model = _perturb(new_model(["a"], "tiny"))
    img = (np.random.default_rng(1).random((40, 52, 3)) * 255).astype(np.uint8)
    plain = compute_irnet(model.irn, img, Params(preset="irnet"), "cpu")
    ref = compute_irnet(model.irn, img, Params(preset="reference"), "cpu")
    assert plain.boundary.shape == ref.boundary.shape == (10, 13)
    # GroupNorm statistics over the padded canvas change the outputs
    assert not torch.allclose(plain.boundary, ref.boundary)


@pytest.mark.parametrize("preset", ["irnet", "reference"])
def test_boundary_is_flip_equivariant_with_and_without_the_512_padding(preset):
    # the flip-averaged boundary of a mirrored image is the mirrored boundary only when
    # each half is padded after flipping (the reference's order): padding first puts the
    # flipped half's padding on the left and shifts its boundary by the padding width
    model = _perturb(new_model(["a"], "tiny"))
    img = (np.random.default_rng(2).random((40, 52, 3)) * 255).astype(np.uint8)
    p = Params(preset=preset)
    out = compute_irnet(model.irn, img, p, "cpu").boundary
    mirrored = compute_irnet(model.irn, np.ascontiguousarray(img[:, ::-1]), p, "cpu").boundary
    torch.testing.assert_close(mirrored, out.flip(-1), atol=1e-6, rtol=0)


def test_import_reference_rejects_wrong_class_count(tmp_path):
    ours = new_model(["a", "b"], "resnet50")
    torch.save(_reference_style(ours.cam.state_dict(), _CAM_STAGES, {}), tmp_path / "cam.pth")
    with pytest.raises(CheckpointError, match="2 classes but 20"):
        import_reference(tmp_path / "cam.pth", None)


def _receptive_radius(head) -> int:
    """How many cells away an input change still moves the output at one cell.

    Group norm mixes statistics over the whole map, so it is left out here:
    what is measured is the reach of the convolutions.
    """
    for parent in list(head.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(parent, name, torch.nn.Identity())
    x = torch.randn(1, 448, 33, 33, requires_grad=True)
    head.eval()(x)[0, :, 16, 16].sum().backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)) > 0).flatten()
    return int(16 - rows.min())


def test_context_head_sees_seven_cells_and_reference_head_one():
    from napari_irnet.models.networks import _displacement_output

    assert _receptive_radius(_displacement_output("reference")) == 0
    assert _receptive_radius(_displacement_output("context")) == 7
    with pytest.raises(ValueError, match="unknown displacement head 'big'.*reference, context"):
        _displacement_output("big")


def test_displacement_head_round_trips_and_old_files_load_the_reference_head(tmp_path):
    model = _perturb(new_model(["a", "b"], "tiny", displacement_head="context"))
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert back.displacement_head == "context" and back.irn.displacement_head == "context"
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(model.irn.eval()(x), back.irn.eval()(x)):
        assert torch.equal(a, b)
    model.displacement_head = "reference"  # a stale field: the network's own head is what gets saved
    assert load_checkpoint(save_checkpoint(model, tmp_path / "n.pt")).irn.displacement_head == "context"
    # a file from before the choice existed: no key, reference layout
    old = torch.load(save_checkpoint(new_model(["a"], "tiny"), tmp_path / "old.pt"), weights_only=True)
    del old["displacement_head"]
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").irn.displacement_head == "reference"
    # weights of one head do not load into the other
    mixed = torch.load(tmp_path / "m.pt", weights_only=True)
    mixed["displacement_head"] = "reference"
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed\.pt: the IRNet weights do not fit"):
        load_checkpoint(tmp_path / "mixed.pt")
    mixed["displacement_head"] = "huge"
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed\.pt: unknown displacement head 'huge'"):
        load_checkpoint(tmp_path / "mixed.pt")


class _Plant:
    """Creates ``marker`` when unpickled: what a planted file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickles_are_refused_never_run(tmp_path):
    from napari_irnet.models.backbones import load_state_dict_file
    from napari_irnet.models.versions import VersionStore

    marker = tmp_path / "MARKER"
    planted = tmp_path / "planted.pt"
    torch.save({"format": "napari-irnet", "version": 1, "evil": _Plant(marker)}, planted)
    for load in (load_checkpoint, load_state_dict_file, lambda p: import_reference(p, None)):
        with pytest.raises(CheckpointError, match=r"planted\.pt: refused: .*Python objects such as \S*open"):
            load(planted)
    store = tmp_path / "store"
    VersionStore(store).save(new_model(["a"], "tiny"))
    (store / "v0001.pt").write_bytes(planted.read_bytes())
    with pytest.raises(CheckpointError, match="refused"):
        VersionStore(store).load()
    assert not marker.exists()
    torch.load(planted, weights_only=False)  # the plant works: a full unpickling would have run it
    assert marker.exists()


def test_bundled_demo_checkpoint_is_plain_data():
    from napari_irnet.demo import BUNDLED_MODEL

    obj = torch.load(BUNDLED_MODEL, map_location="cpu", weights_only=True)
    assert obj["format"] == "napari-irnet"
    model = load_checkpoint(BUNDLED_MODEL)
    assert model.untrained_networks() == [] and model.path == BUNDLED_MODEL


def test_history_of_numpy_values_is_saved_as_plain_data(tmp_path):
    model = new_model(["a"], "tiny")
    model.history.append({"stage": "x", "loss": np.float32(0.5), "n": np.int64(3), "curve": np.arange(3), "where": tmp_path})
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert back.history == [{"stage": "x", "loss": 0.5, "n": 3, "curve": [0, 1, 2], "where": str(tmp_path)}]
    model.history.append({"stage": "y", "thing": object()})
    with pytest.raises(TypeError, match="object cannot be stored"):
        save_checkpoint(model, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt").history == back.history  # the file stayed as it was


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint(new_model(["a"], "tiny"), tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_cam_only_checkpoint_is_refused_for_prediction(tmp_path, tiny_dataset):
    from napari_irnet._napari.jobs import run_job
    from napari_irnet.pipeline.predict import predict, predict_classes
    from napari_irnet.training.finetune import finetune

    model = new_model(["a", "b"], "tiny")
    model.history.append({"stage": "cam", "steps": 3})  # what train-cam writes: IRNet with random heads
    path = save_checkpoint(model, tmp_path / "cam.pt")
    cam_only = load_checkpoint(path)
    assert cam_only.untrained_networks() == ["irn"]
    image = tiny_dataset[0].image
    message = r"cam\.pt: this checkpoint has a trained CAM network but its IRNet was never trained.*train-irn --checkpoint \S*cam\.pt"
    with pytest.raises(CheckpointError, match=message):
        predict(cam_only, image, ["a"])
    with pytest.raises(CheckpointError, match=message):
        list(run_job(path, image, ["a"], device="cpu"))  # the napari panel's path
    with pytest.raises(CheckpointError, match="fine-tuning needs it"):
        next(finetune(cam_only, [], [], []))
    assert isinstance(predict_classes(cam_only, image, device="cpu"), list)  # the classifier alone is trained
    cam_only.history.append({"stage": "irn", "steps": 3})
    assert cam_only.untrained_networks() == []
    cam_only.irn = None
    with pytest.raises(CheckpointError, match="has no IRNet"):
        predict(cam_only, image, ["a"])


def test_cam_output_stride_8_round_trips_and_old_files_load_at_16(tmp_path):
    from napari_irnet.models.checkpoint import model_fingerprint

    model = _perturb(new_model(["a", "b"], "tiny", cam_output_stride=8))
    x = torch.randn(1, 3, 64, 96)
    assert model.cam.eval().cam(x).shape == (1, 2, 8, 12)  # 8-pixel cells
    same16 = new_model(["a", "b"], "tiny")
    same16.cam.load_state_dict(model.cam.state_dict())
    same16.irn.load_state_dict(model.irn.state_dict())
    assert same16.cam.eval().cam(x).shape == (1, 2, 4, 6)  # the same weights on 16-pixel cells
    assert model.irn.eval()(x)[0].shape == same16.irn.eval()(x)[0].shape  # IRNet's backbone stays at 16
    assert model_fingerprint(model) != model_fingerprint(same16)  # other CAMs: not the same model for caches

    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert back.cam_output_stride == 8 and back.cam.output_stride == 8
    assert torch.equal(back.cam.eval().cam(x), model.cam.cam(x))
    assert model_fingerprint(back) == model_fingerprint(model)
    cams = compute_cams(back.cam, np.zeros((70, 90, 3), np.uint8), [0, 1], Params(cam_scales=(1.0, 0.5)), "cpu")
    assert cams.high_res.shape == (2, 70, 90) and cams.strided.shape == (2, 18, 23)

    # a file from before the choice existed: no key, stride 16
    old = torch.load(tmp_path / "m.pt", weights_only=True)
    del old["cam_output_stride"]
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").cam.eval().cam(x).shape == (1, 2, 4, 6)
    old["cam_output_stride"] = 4
    torch.save(old, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: unknown CAM output stride 4 \(this napari-irnet knows 16, 8\)"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="CAM output stride 12: choose one of 16, 8"):
        new_model(["a"], "tiny", cam_output_stride=12)


def test_efficientnet_at_output_stride_8_keeps_its_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    from napari_irnet.models.networks import CAMNet
    from napari_irnet.models.registry import build_backbone

    torch.manual_seed(0)
    at16 = CAMNet(build_backbone("efficientnet_lite0", None, True), 2)
    at8 = CAMNet(build_backbone("efficientnet_lite0", None, True), 2, output_stride=8)
    at8.load_state_dict(at16.state_dict())  # no new weights
    x = torch.randn(1, 3, 64, 64)
    assert at16.eval().cam(x).shape[-2:] == (4, 4) and at8.eval().cam(x).shape[-2:] == (8, 8)


def test_train_cam_at_output_stride_8_from_the_command_line(tmp_path, tiny_dataset, capsys):
    from napari_irnet.cli import main
    from napari_irnet.synthetic import write_dataset

    root = write_dataset(tiny_dataset[:4], tmp_path / "ds")
    common = ["--images", str(root / "images"), "--labels", str(root / "labels.json"), "--device", "cpu",
              "--cam-epochs", "1", "--cam-batch-size", "4", "--cam-crop-size", "64"]  # fmt: skip
    assert main(["train-cam", *common, "--backbone", "tiny", "--weights", "none", "--cam-output-stride", "8", "--out", str(tmp_path / "s8.pt")]) == 0
    model = load_checkpoint(tmp_path / "s8.pt")
    assert model.cam_output_stride == 8 and model.cam.eval().cam(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)
    # continuing keeps the stride; asking for another one is refused, naming the file
    assert main(["train-cam", *common, "--checkpoint", str(tmp_path / "s8.pt"), "--out", str(tmp_path / "more.pt")]) == 0
    assert load_checkpoint(tmp_path / "more.pt").cam_output_stride == 8
    capsys.readouterr()
    assert main(["train-cam", *common, "--checkpoint", str(tmp_path / "s8.pt"), "--cam-output-stride", "16", "--out", str(tmp_path / "x.pt")]) == 2
    assert "s8.pt: its CAM network has output stride 8; --cam-output-stride 16 applies to a new network only" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
