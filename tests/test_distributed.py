"""torchrun with 2 CPU processes (gloo) gives the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_irnet.cli import main
from napari_irnet.io.images import read_label_image
from napari_irnet.models.backbones import _tiny_resnet
from napari_irnet.models.checkpoint import load_checkpoint
from napari_irnet.synthetic import write_dataset

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _torchrun(args: list[str], cwd, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "napari_irnet.cli", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture
def dataset(tmp_path, tiny_dataset):
    root = write_dataset(tiny_dataset[:8], tmp_path / "ds")
    weights = tmp_path / "tiny_init.pt"
    torch.manual_seed(0)
    torch.save(_tiny_resnet().state_dict(), weights)  # a "pretrained" file: frozen batch norm, as in the paper
    return root, weights


def test_train_cam_on_two_processes_equals_one(tmp_path, dataset):
    root, weights = dataset
    common = [
        "train-cam", "--images", str(root / "images"), "--labels", str(root / "labels.json"), "--device", "cpu",
        "--backbone", "tiny", "--weights", str(weights), "--cam-epochs", "2", "--cam-batch-size", "4",
        "--cam-crop-size", "64", "--cam-resize-long", "56", "72",
        "--amp", "false",  # float32: bfloat16 rounds a half batch's sums differently from a whole one's
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one.pt")]) == 0
    two = _torchrun([*common, "--out", str(tmp_path / "two.pt")], tmp_path)
    assert two.stdout.count("saved") == 1  # rank 0 writes, once
    one, two = load_checkpoint(tmp_path / "one.pt"), load_checkpoint(tmp_path / "two.pt")
    changed = 0
    start = _tiny_resnet().state_dict()
    for key, value in one.cam.state_dict().items():
        torch.testing.assert_close(two.cam.state_dict()[key], value, atol=1e-5, rtol=1e-4, msg=key)
        tv_key = key.removeprefix("backbone.")
        if tv_key in start and not torch.equal(start[tv_key], value):
            changed += 1
    assert changed > 0 or any("classifier" in k for k in one.cam.state_dict())


def test_predict_on_two_processes_writes_every_image_once(tmp_path, dataset, tiny_dataset):
    from napari_irnet.models.checkpoint import new_model, save_checkpoint
    from napari_irnet.params import Params
    from napari_irnet.synthetic import CLASS_NAMES

    root, _ = dataset
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.params = Params(cam_scales=(1.0,), walk_steps=8, centroid_steps=10, use_crf=False)
    ckpt = save_checkpoint(model, tmp_path / "model.pt")
    common = ["predict", "--images", str(root / "images"), "--labels", str(root / "labels.json"), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two = _torchrun([*common, "--out", str(tmp_path / "two")], tmp_path)
    assert "wrote 8 predictions" in two.stdout and two.stdout.count("wrote") == 1
    for sample in tiny_dataset[:8]:
        a = read_label_image(tmp_path / "one" / f"{sample.name}_instances.tif")
        b = read_label_image(tmp_path / "two" / f"{sample.name}_instances.tif")
        np.testing.assert_array_equal(a, b)
