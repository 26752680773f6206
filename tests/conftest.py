"""Test configuration: single-threaded torch, and viewer tests only with a display."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def _have_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_configure(config):
    config.addinivalue_line("markers", "viewer: needs a napari viewer under a display")


def pytest_collection_modifyitems(config, items):
    # pytest-xvfb has started its virtual display (and set DISPLAY) by now, if it could.
    if _have_display():
        return
    # Qt without any display aborts the whole process; offscreen is fine for widgets
    # that need no OpenGL, but not for a viewer with layers.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    skip = pytest.mark.skip(
        reason="no X display and no Xvfb: install xvfb (make sysdeps, as root) to run viewer tests"
    )
    for item in items:
        uses_viewer = {"make_napari_viewer", "make_napari_viewer_proxy"} & set(
            getattr(item, "fixturenames", ())
        )
        if uses_viewer or item.get_closest_marker("viewer"):
            item.add_marker(skip)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Config and corrections of images without a file go to tmp_path."""
    monkeypatch.setenv("NAPARI_IRNET_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NAPARI_IRNET_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def make_tiny_checkpoint(env):
    """``make(params, train_params=None)``: a random ``tiny`` CAM + IRNet checkpoint (seed 0) in tmp_path."""

    def make(params, train_params=None):
        import torch

        from napari_irnet.models.checkpoint import new_irnet, new_model, save_checkpoint
        from napari_irnet.synthetic import CLASS_NAMES

        torch.manual_seed(0)
        model = new_model(list(CLASS_NAMES), "tiny")
        model.irn = new_irnet(model, "cam")
        model.params = params
        if train_params is not None:
            model.train_params = train_params
        return save_checkpoint(model, env / "tiny.pt")

    return make


@pytest.fixture
def fast_checkpoint(make_tiny_checkpoint):
    """A random ``tiny`` checkpoint with fast post-processing (one CAM scale, 16 walk steps) and one-step fine-tuning."""
    from napari_irnet.params import Params, TrainParams

    fast = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False, min_fragment_fraction=0.0)
    one_step = TrainParams(irn_crop_size=64, irn_batch_size=2, irn_rescale=(0.9, 1.1), train_radius=5, finetune_epochs=1, correction_weight=2)
    return make_tiny_checkpoint(fast, one_step)


@pytest.fixture
def cells_sample():
    """One 96x96 synthetic image with its labels and instances (deterministic)."""
    from napari_irnet.synthetic import make_dataset

    return make_dataset(1, shape=(96, 96), seed=5, prefix="f")[0]


@pytest.fixture
def tiny_dataset():
    """Eight 64x64 synthetic images (deterministic)."""
    from napari_irnet.synthetic import make_dataset

    return make_dataset(8, shape=(64, 64), seed=123)
