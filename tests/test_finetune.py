"""Fine-tuning from corrections: labels, loop, stop and resume, versions."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from napari_irnet.models.checkpoint import load_checkpoint, new_irnet, new_model
from napari_irnet.models.torch_files import CheckpointError
from napari_irnet.models.versions import VersionStore
from napari_irnet.params import Params, TrainParams
from napari_irnet.synthetic import CLASS_NAMES
from napari_irnet.training.datasets import LabelledImage
from napari_irnet.training.finetune import finetune
from napari_irnet.training.finetune_data import correction_class_maps, finetune_labels
from napari_irnet.training.targets import relation_labels

TP = TrainParams(
    irn_batch_size=2, irn_crop_size=64, irn_rescale=(0.9, 1.1), train_radius=5,
    cam_batch_size=2, cam_crop_size=64, cam_resize_long=(56, 72),
    finetune_epochs=2, finetune_learning_rate=0.05, correction_weight=2,
)  # fmt: skip
FAST = Params(cam_scales=(1.0,), use_crf=False)


@pytest.fixture
def setup(tiny_dataset):
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.irn = new_irnet(model, "cam")
    samples = tiny_dataset[:4]
    items = [LabelledImage(s.name, s.image, [CLASS_NAMES.index(c) for c in s.labels]) for s in samples]
    corrections = [samples[0].instances, None, samples[2].instances, None]
    return model, items, corrections, samples


def _labels(model, items, corrections):
    out = {i: (lab, strong) for i, lab, strong in finetune_labels(model, items, corrections, params=FAST, device="cpu")}
    return [out[i][0] for i in range(len(items))], [out[i][1] for i in range(len(items))]


def test_labels_are_exact_where_corrected_and_weak_elsewhere(setup):
    model, items, corrections, samples = setup
    labels, strong = _labels(model, items, corrections)
    assert strong == [True, False, True, False]
    # corrected: one value per instance (touching instances of one class stay apart)
    assert len(np.unique(labels[0])) == len(np.unique(samples[0].instances))
    assert not (labels[0] == 255).any()
    # weak: CAM seeds, values are classes + 1 or ignore
    allowed = {0, 255} | {CLASS_NAMES.index(c) + 1 for c in samples[1].labels}
    assert set(np.unique(labels[1])) <= allowed
    with pytest.raises(ValueError, match="shape"):
        list(finetune_labels(model, items, [samples[0].instances[:10]] + corrections[1:], params=FAST, device="cpu"))


def test_finetune_changes_the_heads_and_records_history(setup):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    before = {k: v.clone() for k, v in model.irn.state_dict().items()}
    records = list(finetune(model, items, labels, strong, TP, "cpu"))
    # 4 images, 2 corrected drawn twice -> 6 per epoch, batch 2 -> 3 steps, 2 epochs
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["images_per_second"] > 0 for r in records)
    assert not any("dp_centroid" in r for r in records)  # off by default
    after = model.irn.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "fc_edge" in k or "fc_dp" in k)
    assert model.history[-1]["stage"] == "finetune" and model.history[-1]["corrected_images"] == 2


def _class_maps(corrections, samples):
    return correction_class_maps(corrections, [s.instance_classes for s in samples], list(CLASS_NAMES))


def test_centroid_regression_on_corrected_images_when_weighted(setup):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    weighted = dataclasses.replace(TP, centroid_loss_weight=0.5, finetune_epochs=1)
    records = list(finetune(model, items, labels, strong, weighted, "cpu"))
    # 6 draws per epoch in batches of 2: the batches holding a corrected image get the centroid term
    with_term = [r for r in records if "dp_centroid" in r]
    assert with_term and all(np.isfinite(r["dp_centroid"]) and r["dp_centroid"] > 0 for r in with_term)
    for r in with_term:
        pairs = (r["pos"] + r["neg"]) / 2 + (r["dp_fg"] + r["dp_bg"]) / 2
        assert r["loss"] == pytest.approx(pairs + 0.5 * r["dp_centroid"], rel=1e-5)


def _record_rates(monkeypatch, step_name: str) -> list:
    """Wrap ``training.finetune.<step_name>``; the list it returns gets each step's learning rates, one per group."""
    import napari_irnet.training.finetune as ft

    rates = []
    real = getattr(ft, step_name)

    def spy(net, opt, *args):
        rates.append([g["lr"] for g in opt.param_groups])
        return real(net, opt, *args)

    monkeypatch.setattr(ft, step_name, spy)
    return rates


def test_the_cam_classifier_fine_tunes_at_the_base_rate(setup, monkeypatch):
    """The CAM classifier is no longer new when fine-tuning: no new-layer multiple (it diverged with one)."""
    model, items, corrections, samples = setup
    labels, strong = _labels(model, items, corrections)
    rates = _record_rates(monkeypatch, "cam_step")
    tp = dataclasses.replace(TP, finetune_epochs=1, new_layer_lr_mult=10.0)
    list(finetune(model, items, labels, strong, tp, "cpu", class_maps=_class_maps(corrections, samples)))
    assert rates and rates[0] == pytest.approx([tp.finetune_learning_rate] * 2)


@pytest.mark.parametrize("weight", [1.0, 0.0, 0.25])
def test_weak_displacement_weight_reaches_every_step(setup, monkeypatch, weight):
    import napari_irnet.training.finetune as ft

    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    seen = []
    real = ft.irn_step

    def spy(net, opt, x, y, index, dev, amp, corrected, centroid_weight, displacement_weight=None):
        seen.append((corrected.clone(), displacement_weight))
        return real(net, opt, x, y, index, dev, amp, corrected, centroid_weight, displacement_weight)

    monkeypatch.setattr(ft, "irn_step", spy)
    list(finetune(model, items, labels, strong, dataclasses.replace(TP, weak_displacement_weight=weight), "cpu"))
    assert len(seen) == 6
    for corrected, w in seen:
        if weight == 1.0:
            assert w is None  # the reference's losses, untouched
        else:
            assert torch.equal(w, torch.where(corrected, 1.0, weight))
    with pytest.raises(ValueError, match="weak_displacement_weight"):
        next(finetune(model, items, labels, strong, dataclasses.replace(TP, weak_displacement_weight=-0.5), "cpu"))
    # without any correction the weight is not applied (nothing else would train the displacement)
    seen.clear()
    weak_only = [False] * len(items)
    list(finetune(model, items, labels, weak_only, dataclasses.replace(TP, weak_displacement_weight=0.0, finetune_epochs=1), "cpu"))
    assert seen and all(w is None for _, w in seen)


@pytest.mark.parametrize("head", ["reference", "context"])
def test_reset_displacement_head_reinitialises_only_that_branch(head):
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny", displacement_head=head)
    net = model.irn
    backbone = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("fc_"):
                p.zero_()  # a collapsed model: every head weight zero
        net.mean_shift.running_mean.fill_(3.0)
    net.reset_displacement_head()
    dp = {k: v for k, v in net.state_dict().items() if k.startswith("fc_dp") and "running_mean" not in k}
    convs = [v for k, v in dp.items() if v.dim() == 4]
    assert convs and all(float(v.abs().sum()) > 0 for v in convs)
    norms = [v for k, v in dp.items() if v.dim() == 1 and k.endswith("weight")]
    assert norms and all(torch.equal(v, torch.ones_like(v)) for v in norms)  # GroupNorm scale back at 1
    assert torch.equal(net.mean_shift.running_mean, torch.zeros(2))
    with torch.no_grad():
        assert all(float(v.abs().sum()) == 0 for k, v in net.named_parameters() if k.startswith("fc_edge"))
        assert all(torch.equal(v, backbone[k]) for k, v in net.backbone.state_dict().items())
        _, disp = net.eval()(torch.rand(1, 3, 32, 32))
    assert float(disp.abs().sum()) > 0  # the collapsed (zero) field is gone


def test_finetune_resets_the_displacement_branch_only_with_corrections(setup, monkeypatch):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    calls = []
    monkeypatch.setattr(type(model.irn), "reset_displacement_head", lambda self: calls.append(self))
    rates = _record_rates(monkeypatch, "irn_step")
    tp = dataclasses.replace(TP, finetune_epochs=1, irn_learning_rate=0.2)
    list(finetune(model, items, labels, strong, tp, "cpu"))
    assert calls == []  # not asked, and the tiny model's field has not collapsed
    # the first step runs at the base rates: boundary branch, displacement branch (x new_layer_lr_mult)
    assert rates[0] == pytest.approx([0.05, 0.05 * tp.new_layer_lr_mult])
    reset = dataclasses.replace(tp, finetune_reset_displacement=True)
    rates.clear()
    list(finetune(model, items, labels, [False] * len(items), reset, "cpu"))
    assert calls == []  # nothing to relearn it from
    assert rates[0] == pytest.approx([0.05, 0.05 * tp.new_layer_lr_mult])
    rates.clear()
    list(finetune(model, items, labels, strong, reset, "cpu"))
    assert calls == [model.irn]
    # the fresh branch trains at the fine-tuning rate (the training rate did worse on CoNSeP, BENCHMARKS.md)
    assert rates[0] == pytest.approx([0.05, 0.05 * tp.new_layer_lr_mult])


class _FixedField(torch.nn.Module):
    """An IRNet stand-in whose displacement is a given (2, h, w) field (zero-padded to the input's grid)."""

    def __init__(self, field: np.ndarray):
        super().__init__()
        self.field = torch.from_numpy(np.asarray(field, np.float32))

    def forward(self, x):
        n, _, H, W = x.shape
        disp = torch.zeros(n, 2, -(-H // 4), -(-W // 4))
        h, w = self.field.shape[1:]
        disp[:, :, :h, :w] = self.field
        return torch.zeros(n, 1, *disp.shape[2:]), disp


def _two_squares() -> np.ndarray:
    inst = np.zeros((64, 64), np.int32)
    inst[8:24, 8:24] = 1
    inst[32:56, 36:60] = 2
    return inst


def test_field_check_measures_the_field_against_the_centroids():
    from napari_irnet.models.checkpoint import Model
    from napari_irnet.training.field_check import check_displacement_field
    from napari_irnet.training.targets import displacement_target

    inst = _two_squares()
    labels = relation_labels(inst)
    item = LabelledImage("a", np.zeros((64, 64, 3), np.uint8), [0])
    target, valid = displacement_target(inst)
    true_length = float(np.linalg.norm(target, axis=0)[valid].mean())
    assert true_length > 1.5  # squares of 4x4 and 6x6 grid cells

    model = Model(classes=["a"], backbone="tiny", irn=_FixedField(target))
    exact = check_displacement_field(model, [item], [labels], FAST, "cpu")
    assert exact.cells == int(valid.sum()) and exact.error == pytest.approx(0, abs=1e-6)
    assert exact.predicted_length == pytest.approx(true_length) and not exact.collapsed

    model.irn = _FixedField(np.zeros_like(target))
    zero = check_displacement_field(model, [item], [labels], FAST, "cpu")
    assert zero.collapsed and zero.predicted_length == 0 and zero.error == pytest.approx(true_length)

    # a field at a quarter of the way is collapsed (under 0.2 of it is), at half the way it is not
    model.irn = _FixedField(target * 0.15)
    assert check_displacement_field(model, [item], [labels], FAST, "cpu").collapsed
    model.irn = _FixedField(target * 0.5)
    assert not check_displacement_field(model, [item], [labels], FAST, "cpu").collapsed

    # unreviewed (ignored) pixels are not compared; nothing left to compare says nothing
    ignored = labels.copy()
    ignored[32:, :] = 255
    part = check_displacement_field(model, [item], [ignored], FAST, "cpu")
    assert part.cells == int(valid[:8].sum())
    none = check_displacement_field(model, [item], [np.full_like(labels, 255)], FAST, "cpu")
    assert none.cells == 0 and not none.collapsed
    # a window smaller than the image is placed on the corrected instances, wherever they are
    model.irn = _FixedField(np.zeros((2, 8, 8)))
    corner = np.zeros((64, 64), np.int32)
    corner[40:60, 42:62] = 1
    small = check_displacement_field(model, [item], [relation_labels(corner)], FAST, "cpu", crop=32)
    assert small.cells == 25 and small.collapsed


def _collapse(model) -> None:
    """Zero the last displacement layer: the field is 0 everywhere, as the weak CoNSeP model's was."""
    with torch.no_grad():
        for p in model.irn.fc_dp7.parameters():
            p.zero_()
        model.irn.mean_shift.running_mean.zero_()


def test_finetune_relearns_a_collapsed_field_as_if_asked(setup):
    from napari_irnet.training.field_check import describe_reset

    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    _collapse(model)
    tp = dataclasses.replace(TP, finetune_epochs=1)
    auto, asked = copy.deepcopy(model), copy.deepcopy(model)
    records = list(finetune(auto, items, labels, strong, tp, "cpu"))
    assert records[0]["displacement_reset"] == "collapsed" and "displacement_reset" not in records[1]
    entry = auto.history[-1]
    assert entry["displacement_reset"] == "collapsed" and entry["field_check"]["predicted_length"] == 0
    assert "collapsed" in describe_reset(entry)
    list(finetune(asked, items, labels, strong, dataclasses.replace(tp, finetune_reset_displacement=True), "cpu"))
    assert asked.history[-1]["displacement_reset"] == "asked" and asked.history[-1]["field_check"] is None
    # the automatic reset is the asked one: the same weights after the same steps
    a, b = auto.irn.state_dict(), asked.irn.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without corrections there is nothing to relearn it from, and nothing is checked
    weak = copy.deepcopy(model)
    list(finetune(weak, items, labels, [False] * len(items), tp, "cpu"))
    assert weak.history[-1]["displacement_reset"] is None and weak.history[-1]["field_check"] is None
    assert describe_reset(weak.history[-1]) is None


def test_finetune_keeps_a_field_that_has_not_collapsed(setup, monkeypatch):
    import napari_irnet.training.finetune as ft
    from napari_irnet.training.field_check import FieldCheck

    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    calls, checked = [], []
    monkeypatch.setattr(type(model.irn), "reset_displacement_head", lambda self: calls.append(self))

    def healthy(model, items, labels, *args, **kwargs):
        checked.append(len(items))
        return FieldCheck(predicted_length=2.0, target_length=3.0, error=1.0, cells=100)

    monkeypatch.setattr(ft, "check_displacement_field", healthy)
    list(finetune(model, items, labels, strong, dataclasses.replace(TP, finetune_epochs=1), "cpu"))
    assert checked == [sum(strong)] and calls == []  # the corrected images were checked, the branch kept
    assert model.history[-1]["displacement_reset"] is None
    assert model.history[-1]["field_check"]["predicted_length"] == 2.0


@pytest.mark.parametrize("with_cam", [False, True], ids=["irn", "irn+cam"])
def test_stop_then_resume_equals_an_uninterrupted_run(setup, tmp_path, with_cam):
    model, items, corrections, samples = setup
    labels, strong = _labels(model, items, corrections)
    maps = _class_maps(corrections, samples) if with_cam else None
    start = {k: v.clone() for k, v in model.irn.state_dict().items()}
    cam_start = {k: v.clone() for k, v in model.cam.state_dict().items()}

    full = list(finetune(model, items, labels, strong, TP, "cpu", class_maps=maps))
    reference = {k: v.clone() for k, v in model.irn.state_dict().items()}
    cam_reference = {k: v.clone() for k, v in model.cam.state_dict().items()}
    assert ("cam_loss" in full[0]) == with_cam

    model.irn.load_state_dict(start)
    model.cam.load_state_dict(cam_start)
    resume = tmp_path / "finetune.resume"
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    first = list(finetune(model, items, labels, strong, TP, "cpu", should_stop=stop_after_four, resume_file=resume, class_maps=maps))
    assert first[-1]["stopped"] and first[-1]["step"] == 4 and resume.exists()

    model.irn.load_state_dict(start)  # as after a crash: the weights in memory are gone
    model.cam.load_state_dict(cam_start)
    second = list(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume, class_maps=maps))
    assert second[0]["resumed_from"] == 4 and [r["step"] for r in second] == [5, 6]
    # kept until the caller has saved the result: the same run again trains nothing and gives the same weights
    assert resume.exists()
    model.irn.load_state_dict(start)
    model.cam.load_state_dict(cam_start)
    assert list(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume, class_maps=maps)) == []
    assert model.history[-1]["steps"] == 6 and model.history[-1]["final_loss"] == second[-1]["loss"]
    for key, value in reference.items():
        torch.testing.assert_close(model.irn.state_dict()[key], value, msg=key)
    for key, value in cam_reference.items():
        torch.testing.assert_close(model.cam.state_dict()[key], value, msg=key)
    assert [r["loss"] for r in full[4:]] == pytest.approx([r["loss"] for r in second], rel=1e-5)
    if with_cam:
        assert [r["cam_loss"] for r in full[4:]] == pytest.approx([r["cam_loss"] for r in second], rel=1e-5)


def test_corrected_classes_train_the_cam_network_only_when_asked(setup):
    model, items, corrections, samples = setup
    labels, strong = _labels(model, items, corrections)
    maps = _class_maps(corrections, samples)
    assert maps[1] is None and maps[3] is None
    for i in (0, 2):  # each corrected instance carries its class
        for iid, name in samples[i].instance_classes.items():
            assert (maps[i][samples[i].instances == iid] == CLASS_NAMES.index(name) + 1).all()
    # an unknown class name is an error, never silently dropped
    tables = [{**samples[0].instance_classes, 1: "unicorn"}, None, None, None]
    with pytest.raises(ValueError, match="correction 0: class 'unicorn' is not one of the model's classes"):
        correction_class_maps(corrections, tables, list(CLASS_NAMES))

    cam_before = {k: v.clone() for k, v in model.cam.state_dict().items()}
    off = dataclasses.replace(TP, finetune_cam=False)
    records = list(finetune(model, items, labels, strong, off, "cpu", class_maps=maps))
    assert "cam_loss" not in records[-1] and not model.history[-1]["cam_trained"]
    assert all(torch.equal(cam_before[k], v) for k, v in model.cam.state_dict().items())

    records = list(finetune(model, items, labels, strong, TP, "cpu", class_maps=maps))
    assert all(np.isfinite(r["cam_loss"]) for r in records) and model.history[-1]["cam_trained"]
    changed = [k for k, v in model.cam.state_dict().items() if not torch.equal(cam_before[k], v)]
    assert "classifier.weight" in changed and any(k.startswith("backbone.layer4") for k in changed)
    assert not model.cam.training
    with pytest.raises(ValueError, match="class maps for"):
        next(finetune(model, items, labels, strong, TP, "cpu", class_maps=maps[:2]))


def test_resume_file_of_another_run_is_not_used(setup, tmp_path):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    resume = tmp_path / "finetune.resume"
    list(finetune(model, items, labels, strong, TP, "cpu", should_stop=lambda: True, resume_file=resume))
    assert resume.exists()
    other = dataclasses.replace(TP, finetune_epochs=1)
    records = list(finetune(model, items, labels, strong, other, "cpu", resume_file=resume))
    assert records[0]["step"] == 1 and "resumed_from" not in records[0]
    resume.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="finetune.resume"):
        next(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume))


def test_version_store_rolls_back(setup, tmp_path):
    model, *_ = setup
    store = VersionStore(tmp_path / "versions")
    assert store.versions() == [] and store.latest() is None
    with pytest.raises(CheckpointError, match="no model versions"):
        store.load()
    first = store.save(model, note="weak")
    original = {k: v.clone() for k, v in model.irn.state_dict().items()}
    with torch.no_grad():
        for p in model.irn.parameters():
            p.add_(1.0)
    second = store.save(model, note="after 5 corrections")
    assert (first["version"], second["version"], second["parent"]) == (1, 2, 1)
    assert [r["note"] for r in store.versions()] == ["weak", "after 5 corrections"]
    old = store.load(1)
    for key, value in original.items():
        torch.testing.assert_close(old.irn.state_dict()[key], value)
    assert not torch.equal(store.load().irn.state_dict()["fc_edge1.0.weight"], original["fc_edge1.0.weight"])
    assert load_checkpoint(store.path(2)).classes == model.classes
    with pytest.raises(CheckpointError, match="no version 7"):
        store.path(7)


def test_cli_finetune_writes_new_checkpoint_and_keeps_the_old(setup, tmp_path, capsys):
    from napari_irnet.cli import main
    from napari_irnet.io.results import write_instance_tiff, write_instances_json
    from napari_irnet.models.checkpoint import save_checkpoint
    from napari_irnet.synthetic import write_dataset

    model, _, _, samples = setup
    model.params, model.train_params = FAST, TP
    root = write_dataset(samples, tmp_path / "ds")
    start = save_checkpoint(model, tmp_path / "start.pt")
    start_bytes = start.read_bytes()
    corrections = tmp_path / "corrections"
    write_instance_tiff(corrections / f"{samples[1].name}.tif", samples[1].instances)
    common = ["--checkpoint", str(start), "--images", str(root / "images"), "--labels", str(root / "labels.json"), "--device", "cpu"]
    out = tmp_path / "tuned.pt"
    assert main(["finetune", *common, "--corrections", str(corrections), "--out", str(out), "--finetune-epochs", "1"]) == 0
    said = capsys.readouterr().out
    assert "1 corrected and 3 weakly labelled" in said and "CAM network" not in said  # no classes known: IRNet only
    assert start.read_bytes() == start_bytes
    tuned = load_checkpoint(out)
    assert tuned.history[-1]["stage"] == "finetune" and tuned.history[-1]["corrected_images"] == 1
    assert not torch.equal(tuned.irn.state_dict()["fc_edge1.0.weight"], model.irn.state_dict()["fc_edge1.0.weight"])
    assert torch.equal(tuned.cam.state_dict()["classifier.weight"], model.cam.state_dict()["classifier.weight"])
    # the instances' classes beside the label image (as predict writes them) train the CAM network too
    records = [{"id": i, "class": c, "score": 1.0, "bbox": [0, 0, 1, 1], "area": 1} for i, c in samples[1].instance_classes.items()]
    write_instances_json(corrections / f"{samples[1].name}_instances.json", records)
    assert main(["finetune", *common, "--corrections", str(corrections), "--out", str(out), "--finetune-epochs", "1"]) == 0
    assert "the CAM network on the class maps of 1" in capsys.readouterr().out
    assert not torch.equal(load_checkpoint(out).cam.state_dict()["classifier.weight"], model.cam.state_dict()["classifier.weight"])
    # a correction of the wrong size and an empty corrections folder are clear errors (exit 2)
    write_instance_tiff(corrections / f"{samples[2].name}.tif", samples[2].instances[:20])
    assert main(["finetune", *common, "--corrections", str(corrections), "--out", str(tmp_path / "x.pt")]) == 2
    assert f"{samples[2].name}.tif" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["finetune", *common, "--corrections", str(tmp_path / "empty"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "no corrected or accepted" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    # --corrected-only leaves the uncorrected images out
    (corrections / f"{samples[2].name}.tif").unlink()
    assert main(["finetune", *common, "--corrections", str(corrections), "--out", str(out), "--finetune-epochs", "1", "--corrected-only"]) == 0
    said = capsys.readouterr().out
    assert "1 corrected and 0 weakly labelled" in said and "collapsed" not in said
    assert load_checkpoint(out).history[-1]["weak_images"] == 0
    # a checkpoint whose displacement field collapsed: relearnt, and said so
    _collapse(model)
    save_checkpoint(model, start)
    assert main(["finetune", *common, "--corrections", str(corrections), "--out", str(out), "--finetune-epochs", "1", "--corrected-only"]) == 0
    assert "the displacement field had collapsed (mean displacement 0.00 grid cells" in capsys.readouterr().out
    assert load_checkpoint(out).history[-1]["displacement_reset"] == "collapsed"


def test_planted_resume_file_is_refused_never_run(setup, tmp_path):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)

    class Plant:
        def __reduce__(self):
            return (open, (str(tmp_path / "MARKER"), "w"))

    resume = tmp_path / "finetune.resume"
    torch.save({"digest": "x", "step": 0, "irn_state": Plant()}, resume)
    with pytest.raises(CheckpointError, match=r"finetune\.resume: refused: the resume file holds Python objects.*delete it"):
        next(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume))
    assert not (tmp_path / "MARKER").exists() and resume.exists()


def test_a_failed_resume_write_warns_and_training_goes_on(setup, tmp_path, monkeypatch):
    import napari_irnet.training.finetune as ft
    from napari_irnet.io.files import OutputError

    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)

    def full_disk(obj, path):
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(ft, "write_torch_file", full_disk)
    with pytest.warns(UserWarning, match="No space left.*training goes on"):
        records = list(finetune(model, items, labels, strong, TP, "cpu", resume_file=tmp_path / "r.resume", save_every=1))
    assert records[-1]["step"] == records[-1]["max_step"] and model.history[-1]["steps"] == records[-1]["step"]
    # asked to stop, the state must be kept: a failed write is an error then
    with pytest.raises(OutputError):
        list(finetune(model, items, labels, strong, TP, "cpu", should_stop=lambda: True, resume_file=tmp_path / "r.resume"))


def test_resume_file_of_another_starting_model_is_not_used_and_a_damaged_one_is_an_error(setup, tmp_path):
    model, items, corrections, _ = setup
    labels, strong = _labels(model, items, corrections)
    resume = tmp_path / "finetune.resume"
    start = {k: v.clone() for k, v in model.irn.state_dict().items()}
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    list(finetune(model, items, labels, strong, TP, "cpu", should_stop=stop_after_two, resume_file=resume))
    model.irn.load_state_dict(start)
    state = torch.load(resume, weights_only=True)
    state["irn_state"].pop("fc_edge1.0.weight")
    torch.save(state, resume)
    with pytest.raises(CheckpointError, match=r"finetune\.resume: a damaged resume file.*delete it"):
        next(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume))
    with torch.no_grad():  # another checkpoint, same images and settings: start over
        model.irn.fc_edge1[0].weight.add_(0.01)
    records = list(finetune(model, items, labels, strong, TP, "cpu", resume_file=resume))
    assert records[0]["step"] == 1 and "resumed_from" not in records[0]


def _project_with_corrections(model, samples, tmp_path, extra_class=None):
    from napari_irnet.models.checkpoint import save_checkpoint
    from napari_irnet.store.create import create_project
    from napari_irnet.synthetic import write_dataset

    model.params, model.train_params = FAST, TP
    root = write_dataset(samples, tmp_path / "ds")
    start = save_checkpoint(model, tmp_path / "start.pt")
    classes = list(CLASS_NAMES) + ([extra_class] if extra_class else [])
    project = create_project(tmp_path / "P", root / "images", root / "labels.json", classes=classes)
    for i, state in ((0, "corrected"), (2, "accepted")):
        table = dict(samples[i].instance_classes)
        if extra_class:
            table[min(table)] = extra_class
        project.save_correction(project.names[i], samples[i].instances, [{"id": k, "class": c} for k, c in table.items()], state=state)
    return root, start, project


def test_cli_finetune_from_a_project_and_from_its_export(setup, tmp_path, capsys):
    from napari_irnet.cli import main

    model, _, _, samples = setup
    root, start, project = _project_with_corrections(model, samples, tmp_path)
    out = tmp_path / "tuned.pt"
    assert main(["finetune", "--checkpoint", str(start), "--project", str(project.root), "--out", str(out),
                 "--finetune-epochs", "1", "--device", "cpu"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "2 corrected and 2 weakly labelled images, the CAM network on the class maps of 2" in said
    tuned = load_checkpoint(out)
    assert tuned.history[-1]["corrected_images"] == 2 and tuned.history[-1]["cam_trained"]
    assert main(["finetune", "--checkpoint", str(start), "--project", str(project.root), "--out", str(out),
                 "--finetune-epochs", "1", "--device", "cpu", "--corrected-only"]) == 0  # fmt: skip
    assert "2 corrected and 0 weakly labelled" in capsys.readouterr().out
    # the project's own label-image export reads back, classes and all (the CAM learns from it too)
    for fmt in ("tif", "png"):
        assert main(["export", "--project", str(project.root), "--out", str(tmp_path / "export"), "--format", fmt]) == 0
        assert main(["finetune", "--checkpoint", str(start), "--images", str(root / "images"), "--labels", str(root / "labels.json"),
                     "--corrections", str(tmp_path / "export" / fmt), "--out", str(out), "--finetune-epochs", "1", "--device", "cpu"]) == 0  # fmt: skip
        cap = capsys.readouterr()
        assert "2 corrected and 2 weakly labelled images, the CAM network on the class maps of 2" in cap.out
        assert "name no instance classes" not in cap.err
    # a label image without its classes: said, not silent
    (tmp_path / "export" / "png" / "instances" / f"{samples[0].name}.json").unlink()
    assert main(["finetune", "--checkpoint", str(start), "--images", str(root / "images"), "--labels", str(root / "labels.json"),
                 "--corrections", str(tmp_path / "export" / "png"), "--out", str(out), "--finetune-epochs", "1", "--device", "cpu"]) == 0  # fmt: skip
    assert "1 corrected image(s) name no instance classes" in capsys.readouterr().err


def test_cli_finetune_refuses_corrections_of_unknown_classes(setup, tmp_path, capsys):
    from napari_irnet.cli import main
    from napari_irnet.io.results import write_instance_tiff, write_instances_json

    model, _, _, samples = setup
    root, start, project = _project_with_corrections(model, samples, tmp_path, extra_class="giraffe")
    out = tmp_path / "tuned.pt"
    assert main(["finetune", "--checkpoint", str(start), "--project", str(project.root), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "correction-000001/instances.json: instance" in err and "'giraffe', which the checkpoint" in err
    corrections = tmp_path / "corr"
    write_instance_tiff(corrections / f"{samples[1].name}.tif", samples[1].instances)
    records = [{"id": k, "class": "unicorn", "score": 1.0, "bbox": [0, 0, 1, 1], "area": 1} for k in samples[1].instance_classes]
    write_instances_json(corrections / f"{samples[1].name}_instances.json", records)
    assert main(["finetune", "--checkpoint", str(start), "--images", str(root / "images"), "--labels", str(root / "labels.json"),
                 "--corrections", str(corrections), "--out", str(out), "--device", "cpu"]) == 2  # fmt: skip
    assert f"{samples[1].name}_instances.json: instance" in capsys.readouterr().err
    assert not out.exists()


def test_class_map_crops_follow_the_models_cam_scale():
    """Per-pixel CAM fine-tuning sees the image at the size the model makes its CAMs at (Params.cam_scales)."""
    from napari_irnet.params import TrainParams
    from napari_irnet.training.datasets import ClassMapDataset, LabelledImage

    image = np.zeros((64, 64, 3), np.uint8)
    image[:32] = 255
    cmap = np.zeros((64, 64), np.int64)
    cmap[:32] = 1
    tp = TrainParams(cam_resize_long=(64, 64), cam_crop_size=128)
    item = [LabelledImage("a", image, [0])]
    x1, y1 = ClassMapDataset(item, [cmap], tp)[0]
    x2, y2 = ClassMapDataset(item, [cmap], tp, scales=(2.0,))[0]
    # the crop (128 px) holds the whole image at 1x (64 px, padded with ignore) and at 2x (128 px, no padding)
    assert (y1 != 255).sum() == 64 * 64 and (y2 != 255).sum() == 128 * 128
    assert (y2 == 1).sum() == 64 * 128
    x3, y3 = ClassMapDataset(item, [cmap], tp, scales=(1.0, 2.0))[0]
    assert (y3 != 255).sum() in (64 * 64, 128 * 128)
