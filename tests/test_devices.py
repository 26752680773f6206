"""The same results on every device: CPU always, CUDA where there is one.

These are the device-parametrised subset that ``benchmarks/gpu_check.sh`` runs
on a GPU machine (``NAPARI_IRNET_TEST_DEVICES=cpu,cuda``); on a machine without
CUDA each runs on the CPU alone, so every CUDA code path (device moves,
autocast) also has a CPU run. Each compares the device's result with the
CPU's, or checks that training on the device lowers its loss.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_irnet.params import Params, TrainParams


def _devices() -> list[str]:
    wanted = os.environ.get("NAPARI_IRNET_TEST_DEVICES", "cpu,cuda").split(",")
    available = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    return [d for d in wanted if d in available] or ["cpu"]


@pytest.fixture(params=_devices())
def device(request) -> str:
    return request.param


FAST = Params(cam_scales=(1.0, 0.5), walk_steps=32, centroid_steps=40, use_crf=False, min_fragment_fraction=0.0)


def _model(classes=("round", "rod", "blob")):
    from napari_irnet.models.checkpoint import new_irnet, new_model

    torch.manual_seed(0)
    model = new_model(list(classes), "tiny")
    model.irn = new_irnet(model, "cam")
    model.params = FAST
    return model


def test_walks_match_the_cpu(device):
    from napari_irnet.pipeline.instance_walk import instance_walk_argmax
    from napari_irnet.pipeline.random_walk import random_walk

    gen = torch.Generator().manual_seed(0)
    boundary = torch.rand(40, 56, generator=gen) ** 4
    cams = torch.rand(2, 40, 56, generator=gen)
    clusters = (np.arange(40)[:, None] // 10 * 6 + np.arange(56)[None] // 10).astype(np.int32)
    cpu = random_walk(cams, boundary, steps=32)
    here = random_walk(cams.to(device), boundary.to(device), steps=32).cpu()
    torch.testing.assert_close(here, cpu, atol=1e-5, rtol=1e-4)
    a, _ = instance_walk_argmax(cams, boundary, clusters, (160, 224), steps=32, method="local")
    b, _ = instance_walk_argmax(cams.to(device), boundary.to(device), clusters, (160, 224), steps=32, method="local")
    torch.testing.assert_close(b[0].cpu(), a[0], atol=1e-5, rtol=1e-4)
    assert (b[1].cpu() == a[1]).float().mean() > 0.999


def test_prediction_matches_the_cpu(device, tiny_dataset):
    from napari_irnet.pipeline.predict import predict

    model = _model()
    image = tiny_dataset[0].image
    out_cpu, pred_cpu = predict(model, image, ["round", "rod"], FAST, "cpu")
    out_dev, pred_dev = predict(model, image, ["round", "rod"], FAST, device)
    torch.testing.assert_close(out_dev.cam.strided, out_cpu.cam.strided, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out_dev.irn.boundary, out_cpu.irn.boundary, atol=1e-4, rtol=1e-3)
    # float noise between devices may move a few pixels across a threshold, no more
    assert np.mean((pred_dev.instances.labels > 0) == (pred_cpu.instances.labels > 0)) > 0.99
    assert np.mean(pred_dev.semantic == pred_cpu.semantic) > 0.99


def test_training_on_the_device_lowers_the_loss(device, tiny_dataset):
    from napari_irnet.training.cam import train_cam
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.irn import make_seeds, train_irn

    model = _model()
    items = [LabelledImage(s.name, s.image, [model.classes.index(c) for c in s.labels]) for s in tiny_dataset]
    tp = TrainParams(cam_epochs=6, cam_batch_size=4, cam_crop_size=64, cam_resize_long=(56, 72), cam_learning_rate=0.05,
                     irn_epochs=2, irn_batch_size=4, irn_crop_size=64, train_radius=5, momentum=0.9)  # fmt: skip
    cam = list(train_cam(model, items, tp, device))
    assert np.mean([r["loss"] for r in cam[-2:]]) < np.mean([r["loss"] for r in cam[:2]])
    seeds = [s for _, s in sorted(make_seeds(model, items, FAST, device=device), key=lambda pair: pair[0])]
    irn = list(train_irn(model, items, seeds, tp, device))
    assert irn and all(np.isfinite(r["loss"]) for r in irn)
    assert model.irn.mean_shift.running_mean.abs().sum() > 0  # the mean displacement was measured
