"""End to end on tiny synthetic data: training loops, prediction, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_irnet.models.checkpoint import load_checkpoint, new_irnet, new_model, save_checkpoint
from napari_irnet.models.networks import normalize_image
from napari_irnet.params import Params, TrainParams
from napari_irnet.pipeline.predict import postprocess, predict, run_networks
from napari_irnet.synthetic import CLASS_NAMES
from napari_irnet.training.cam import cam_pixel_loss, train_cam, train_cam_from_masks
from napari_irnet.training.datasets import LabelledImage
from napari_irnet.training.irn import make_seeds, train_irn

TINY_TRAIN = TrainParams(
    cam_epochs=1, cam_batch_size=4, cam_crop_size=64, cam_resize_long=(56, 72),
    irn_epochs=1, irn_batch_size=4, irn_crop_size=64, irn_rescale=(0.9, 1.1), train_radius=5,
)  # fmt: skip
FAST = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False, min_fragment_fraction=0.0)


def _items(samples):
    return [LabelledImage(s.name, s.image, [CLASS_NAMES.index(c) for c in s.labels]) for s in samples]


def test_predict_end_to_end_on_64px_image_with_random_tiny_model(tiny_dataset):
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    sample = tiny_dataset[0]
    outputs, pred = predict(model, sample.image, sample.labels, FAST, "cpu")
    assert outputs.cam.high_res.shape == (len(sample.labels), 64, 64)
    assert outputs.cam.strided.shape == (len(sample.labels), 16, 16)
    assert outputs.irn.boundary.shape == (16, 16) and outputs.irn.displacement.shape == (2, 16, 16)
    assert 0 <= float(outputs.irn.boundary.min()) and float(outputs.irn.boundary.max()) <= 1
    inst = pred.instances
    assert inst.labels.shape == (64, 64) and inst.labels.dtype == np.int32
    ids = sorted(int(i) for i in np.unique(inst.labels) if i)
    assert ids == [r["id"] for r in inst.records]
    assert {r["class_id"] for r in inst.records} <= {CLASS_NAMES.index(c) for c in sample.labels}
    assert all(0.0 <= r["score"] <= 1.0 for r in inst.records)
    assert pred.semantic.shape == (64, 64)
    assert set(np.unique(pred.semantic)) <= {0} | {CLASS_NAMES.index(c) + 1 for c in sample.labels}
    assert pred.seeds.shape == (64, 64) and pred.clusters.shape == (16, 16)
    assert pred.centre_points.shape == (pred.clusters.max() + 1, 2)


def test_postprocess_reuses_cached_outputs_and_thresholds_matter(tiny_dataset):
    torch.manual_seed(1)
    model = new_model(list(CLASS_NAMES), "tiny")
    sample = tiny_dataset[2]
    outputs = run_networks(model, sample.image, model.class_ids(sample.labels), FAST, "cpu")
    low = postprocess(outputs, FAST.replace(instance_bg_threshold=0.05))
    high = postprocess(outputs, FAST.replace(instance_bg_threshold=0.9))
    assert (low.instances.labels > 0).sum() > (high.instances.labels > 0).sum()


def test_unknown_class_name_is_a_clear_error(tiny_dataset):
    model = new_model(list(CLASS_NAMES), "tiny")
    with pytest.raises(ValueError, match="unknown class"):
        predict(model, tiny_dataset[0].image, ["giraffe"], FAST, "cpu")


def test_training_seeds_use_the_thresholds_of_each_class_by_name(tiny_dataset):
    torch.manual_seed(0)
    items = _items(tiny_dataset)
    model = new_model(list(CLASS_NAMES), "tiny")
    plain = [s for _, s in make_seeds(model, items, FAST, "cpu")]
    seeded = {v for s in plain for v in np.unique(s)} - {0, 255}
    assert seeded, "the random network's CAMs seed some class"
    silent = CLASS_NAMES[min(seeded) - 1]  # a class that seeds: without foreground seeds of its own now
    per_class = [s for _, s in make_seeds(model, items, FAST.replace(seed_class_thresholds={silent: 1.0}), "cpu")]
    for a, b in zip(plain, per_class):
        mine = a == CLASS_NAMES.index(silent) + 1
        assert not (b == CLASS_NAMES.index(silent) + 1).any()
        np.testing.assert_array_equal(b[~mine], a[~mine])  # every other pixel as before
    with pytest.raises(ValueError, match="not giraffe"):
        next(make_seeds(model, items, FAST.replace(seed_class_thresholds={"giraffe": 0.5}), "cpu"))


def test_training_loops_yield_progress_and_save(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    items = _items(tiny_dataset)
    model = new_model(list(CLASS_NAMES), "tiny")
    records = list(train_cam(model, items, TINY_TRAIN, "cpu"))
    assert [r["step"] for r in records] == [1, 2] and records[-1]["max_step"] == 2
    assert all(np.isfinite(r["loss"]) for r in records)
    seeds = [s for _, s in make_seeds(model, items, FAST, "cpu")]
    assert all(s.shape == (64, 64) and s.dtype == np.uint8 for s in seeds)
    model.irn = new_irnet(model, "cam")
    before = model.irn.fc_edge6.weight.detach().clone()
    recs = list(train_irn(model, items, seeds, TINY_TRAIN, "cpu"))
    assert len(recs) == 2 and {"loss", "pos", "neg", "dp_fg", "dp_bg"} <= set(recs[0])
    assert not torch.equal(before, model.irn.fc_edge6.weight)
    assert torch.count_nonzero(model.irn.mean_shift.running_mean) > 0
    assert [h["stage"] for h in model.history] == ["cam", "irn"]
    path = save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(path)
    img = tiny_dataset[1].image
    a = run_networks(model, img, [0], FAST, "cpu")
    b = run_networks(back, img, [0], FAST, "cpu")
    assert torch.allclose(a.irn.displacement, b.irn.displacement)
    assert torch.allclose(a.cam.high_res, b.cam.high_res)


def test_cam_pixel_loss_by_hand():
    # one 1x2 grid over a 2x4 class map: left cell half class 1 (index 0), half ignore; right cell background
    y = torch.tensor([[[1, 255, 0, 0], [1, 255, 0, 0]]])
    logits = torch.zeros(1, 2, 1, 2)
    # every logit 0: both parts are log 2 whatever the target, so the mean is log 2
    assert float(cam_pixel_loss(logits, y)) == pytest.approx(np.log(2))
    logits[0, 0, 0, 0] = 3.0  # class 0 in the left cell, target 1 (the ignored half does not count)
    # class 0: positive part softplus(-3) (left cell only), negative part log 2 (right cell only), averaged;
    # class 1: negative part only, log 2 (logits 0); then the mean over the two classes
    expected = ((np.log1p(np.exp(-3.0)) + np.log(2)) / 2 + np.log(2)) / 2
    assert float(cam_pixel_loss(logits, y)) == pytest.approx(expected, rel=1e-6)
    ignored = torch.full((1, 2, 4), 255)
    assert float(cam_pixel_loss(torch.randn(1, 2, 1, 2), ignored)) == 0.0


def test_cam_pixel_loss_balances_a_rare_class():
    # class 0 fills one 4x4 cell of a 16x16 map (1/16 of the pixels): at logit 0 a plain mean BCE would
    # push every logit down (gradient 0.5 - 1/16 > 0 per cell); the balanced loss has no such pull
    y = torch.zeros(1, 16, 16, dtype=torch.long)
    y[0, :4, :4] = 1
    shift = torch.zeros(1, requires_grad=True)
    cam_pixel_loss(torch.zeros(1, 1, 4, 4) + shift, y).backward()
    assert abs(float(shift.grad)) < 1e-6
    # and the optimum of a free logit per cell is reached with the positive cell positive
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(50):
        opt.zero_grad()
        cam_pixel_loss(logits, y).backward()
        opt.step()
    assert float(logits[0, 0, 0, 0]) > 2.0 and float(logits[0, 0].flatten()[1:].max()) < -2.0


def test_cam_from_masks_learns_where_the_classes_are(tiny_dataset):
    torch.manual_seed(0)
    items = _items(tiny_dataset)
    maps = [s.semantic.astype(np.int32) for s in tiny_dataset]
    model = new_model(list(CLASS_NAMES), "tiny")
    tp = TrainParams(cam_epochs=6, cam_batch_size=4, cam_crop_size=64, cam_resize_long=(64, 64), cam_learning_rate=0.05, momentum=0.9)

    def loss() -> float:
        with torch.no_grad():
            x = torch.stack([normalize_image(torch.from_numpy(it.image).permute(2, 0, 1)) for it in items])
            return float(cam_pixel_loss(model.cam.eval()(x, pixels=True), torch.from_numpy(np.stack(maps)).long()))

    before = loss()
    records = list(train_cam_from_masks(model, items, maps, tp, "cpu"))
    assert [r["step"] for r in records] == list(range(1, 13)) and records[0]["stage"] == "cam_masks"
    assert loss() < 0.8 * before and model.history[-1]["stage"] == "cam_masks"
    with pytest.raises(ValueError, match="shape"):
        next(train_cam_from_masks(model, items, [m[:10] for m in maps], tp, "cpu"))


def test_any_image_size_tiled(tiny_dataset):
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    image = np.tile(tiny_dataset[0].image, (3, 4, 1))[:150, :230]
    params = FAST.replace(tile_size=64, tile_overlap=16)
    outputs, pred = predict(model, image, ["round"], params, "cpu")
    assert outputs.irn.boundary.shape == (38, 58)
    assert outputs.cam.high_res.shape == (1, 150, 230)
    assert pred.instances.labels.shape == (150, 230)
    # tiles are stitched without gaps: every grid cell was written
    assert torch.all(outputs.irn.boundary > 0)


def test_cli_train_and_predict(tmp_path, tiny_dataset):
    from napari_irnet.cli import main
    from napari_irnet.io.images import read_label_image
    from napari_irnet.synthetic import write_dataset

    root = write_dataset(tiny_dataset[:4], tmp_path / "ds")
    common = ["--images", str(root / "images"), "--labels", str(root / "labels.json"), "--device", "cpu"]
    tiny = ["--cam-epochs", "1", "--cam-batch-size", "2", "--cam-crop-size", "64", "--cam-resize-long", "56", "72"]
    assert main(["train-cam", *common, "--out", str(tmp_path / "cam.pt"), "--backbone", "tiny", "--weights", "none", *tiny]) == 0
    irn = ["--irn-epochs", "1", "--irn-batch-size", "2", "--irn-crop-size", "64", "--train-radius", "5", "--cam-scales", "1.0", "--use-crf", "false"]
    assert main(["train-irn", *common, "--checkpoint", str(tmp_path / "cam.pt"), "--out", str(tmp_path / "irn.pt"), "--irn-backbone", "cam",
                 "--displacement-head", "context", "--seed-class-thresholds", "rod=0.5", "blob=1", *irn]) == 0  # fmt: skip
    trained = load_checkpoint(tmp_path / "irn.pt")
    assert trained.irn.displacement_head == "context"
    assert trained.params.seed_class_thresholds == {"rod": 0.5, "blob": 1.0}  # kept with the model
    out = tmp_path / "pred"
    assert main(["predict", *common, "--checkpoint", str(tmp_path / "irn.pt"), "--out", str(out), "--walk-steps", "8", "--centroid-steps", "10"]) == 0
    name = tiny_dataset[0].name
    labels = read_label_image(out / f"{name}_instances.tif")
    assert labels.shape == (64, 64)
    records = json.loads((out / f"{name}_instances.json").read_text())
    assert sorted(r["id"] for r in records) == sorted(int(i) for i in np.unique(labels) if i)
    assert {r["class"] for r in records} <= set(tiny_dataset[0].labels)
    assert (out / f"{name}_semantic.png").is_file()
    # a bad labels file is a clear error, exit code 2
    bad = tmp_path / "bad.csv"
    bad.write_text("image,classes\nnope.png,round\n")
    assert main(["predict", "--images", str(root / "images"), "--labels", str(bad), "--checkpoint", str(tmp_path / "irn.pt"), "--out", str(out)]) == 2


@pytest.mark.parametrize(("tile", "overlap"), [(1024, 128), (64, 16), (512, 0)])
def test_tiles_cover_the_image_with_the_overlap_and_little_waste(tile, overlap):
    from napari_irnet.pipeline.inference import _tile_layout

    for length in range(tile + 1, 9 * tile, 37):
        starts, extent = _tile_layout(length, tile, overlap)
        n = len(starts)
        assert starts[0] == 0 and all(s % 16 == 0 for s in starts) and extent <= tile
        assert starts[-1] + extent >= length  # the last tile reaches the far side
        assert all(b - a <= extent - overlap for a, b in zip(starts, starts[1:]))  # neighbours share the overlap
        # evenly spread: no more pixels than the overlaps need, up to the rounding to 16 px
        assert n * extent <= length + (n - 1) * overlap + 32 * n


def test_class_probabilities_equal_the_classifier_and_tile_large_images(tiny_dataset):
    from napari_irnet.pipeline.inference import image_to_tensor
    from napari_irnet.pipeline.predict import class_probabilities

    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.params = model.params.replace(network_precision="float32")  # compared with the float32 classifier
    image = np.tile(tiny_dataset[0].image, (3, 4, 1))[:150, :230]
    x = image_to_tensor(image, torch.device("cpu"))
    model.cam.eval()
    with torch.no_grad():
        direct = torch.sigmoid(model.cam(torch.cat([x, x.flip(-1)]))).mean(0)
    whole = class_probabilities(model, image, "cpu")
    torch.testing.assert_close(whole, direct, atol=1e-5, rtol=1e-5)  # one tile: the classifier itself
    model.params = model.params.replace(tile_size=128, tile_overlap=32)
    tiled = class_probabilities(model, image, "cpu")  # 2 x 2 tiles
    assert tiled.shape == (len(CLASS_NAMES),)
    assert torch.allclose(tiled, whole, atol=0.05)  # cells near tile borders differ a little


def test_network_precision_picks_bfloat16_only_where_asked_or_where_the_device_has_units(monkeypatch):
    from napari_irnet.params import ParamError
    from napari_irnet.pipeline import inference

    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "bfloat16_units", lambda device: True)
    assert inference.network_dtype(Params(), cpu) == torch.bfloat16
    assert inference.network_dtype(Params(preset="reference"), cpu) == torch.float32  # the reference is float32
    assert inference.network_dtype(Params(network_precision="float32"), cpu) == torch.float32
    assert inference.network_dtype(Params(network_precision="bfloat16"), torch.device("mps")) == torch.float32
    monkeypatch.setattr(inference, "bfloat16_units", lambda device: False)
    assert inference.network_dtype(Params(), cpu) == torch.float32
    assert inference.network_dtype(Params(network_precision="bfloat16"), cpu) == torch.bfloat16
    with pytest.raises(ParamError, match="network_precision"):
        Params(network_precision="half")


def test_networks_in_bfloat16_give_float32_outputs_close_to_float32(tiny_dataset):
    from napari_irnet.pipeline.inference import compute_cams, compute_irnet
    from napari_irnet.pipeline.predict import class_probabilities

    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.irn = new_irnet(model)
    image = tiny_dataset[0].image
    out = {}
    for precision in ("float32", "bfloat16"):
        params = model.params.replace(network_precision=precision, cam_scales=(1.0,))
        model.params = params
        cam = compute_cams(model.cam, image, [0, 1], params, "cpu")
        irn = compute_irnet(model.irn, image, params, "cpu")
        out[precision] = (cam.strided, irn.boundary, irn.displacement, class_probabilities(model, image, "cpu"))
    for a, b in zip(out["float32"], out["bfloat16"]):
        assert b.dtype == torch.float32
        assert not torch.equal(a, b)  # the convolutions did run in bfloat16
        torch.testing.assert_close(b, a, atol=0.05 * float(a.abs().max()) + 1e-3, rtol=0)


def test_large_images_are_normalised_tile_by_tile_with_the_same_values(tiny_dataset):
    from napari_irnet.pipeline.inference import image_to_tensor, network_input, run_tiled

    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.cam.eval()
    image = np.tile(tiny_dataset[0].image, (3, 4, 1))[:150, :230]
    small, prepare = network_input(image[:60, :60], torch.device("cpu"), 64)
    assert prepare is None and small.dtype == torch.float32  # one tile: normalised whole
    pixels, prepare = network_input(image, torch.device("cpu"), 64)
    assert pixels.dtype == torch.uint8 and prepare is not None  # tiles: kept 8-bit until each tile runs
    with torch.no_grad():
        fn = lambda t: model.cam.cam(t)  # noqa: E731
        whole = run_tiled(fn, image_to_tensor(image, torch.device("cpu")), 16, 64, 16)
        tiled = run_tiled(fn, pixels, 16, 64, 16, prepare)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_cams_at_output_stride_8_align_and_tile(tiny_dataset):
    import torch.nn.functional as F

    from napari_irnet.pipeline.inference import compute_cams

    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny", cam_output_stride=8)
    image = np.tile(tiny_dataset[0].image, (3, 4, 1))[:72, :120]  # sides not multiples of 16
    one = FAST.replace(cam_scales=(1.0,), network_precision="float32")
    cams = compute_cams(model.cam, image, [0, 2], one, "cpu")
    # each of the 9 x 15 CAM cells covers its own 8 x 8 pixels
    x = normalize_image(torch.from_numpy(image).permute(2, 0, 1).float())[None]
    raw = model.cam.eval().cam(x) + model.cam.cam(x.flip(-1)).flip(-1)
    assert raw.shape[-2:] == (9, 15)
    direct = F.interpolate(raw[:, [0, 2]], (72, 120), mode="bilinear", align_corners=False)[0]
    direct /= F.adaptive_max_pool2d(direct, (1, 1)) + 1e-5
    torch.testing.assert_close(cams.high_res, direct, atol=1e-4, rtol=1e-4)
    # an image larger than a tile: stitched on the stride-8 grid, every cell written
    big = np.tile(tiny_dataset[0].image, (3, 4, 1))[:150, :230]
    tiled = compute_cams(model.cam, big, [0], one.replace(tile_size=96, tile_overlap=32), "cpu")
    whole = compute_cams(model.cam, big, [0], one, "cpu")
    assert tiled.high_res.shape == whole.high_res.shape == (1, 150, 230)
    # tiles see less context than the whole image: close, not equal (0.005 of a mean of 0.026 here)
    assert float((tiled.high_res - whole.high_res).abs().mean()) < 0.01
