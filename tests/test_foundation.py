"""The package skeleton: import boundaries, manifest, sample data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

#: everything but the napari plugin: the engine's subpackages, its top-level modules and the command line
ENGINE = ("models", "pipeline", "training", "annotation", "store", "io", "evaluation", "cli")
ENGINE_MODULES = ("params", "progress", "synthetic")


def test_the_engine_imports_neither_napari_nor_qt():
    code = (
        "import sys, pkgutil, importlib\n"
        f"packages = {ENGINE!r}\n"
        f"modules = {ENGINE_MODULES!r}\n"
        "for name in packages:\n"
        "    pkg = importlib.import_module('napari_irnet.' + name)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('.__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "for name in modules:\n"
        "    importlib.import_module('napari_irnet.' + name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')]\n"
        "print(','.join(bad))\n"
        "assert all('napari_irnet.' + name in sys.modules for name in packages + modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the engine pulled in GUI modules: {out.stdout}"


def test_every_engine_package_is_checked_above():
    """A new public subpackage joins ``ENGINE`` (so the check above covers it); the plugin's start with ``_``."""
    from pathlib import Path

    import napari_irnet

    root = Path(napari_irnet.__file__).parent
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_"))
    assert packages == sorted(ENGINE)


def test_manifest_is_valid_and_every_command_imports():
    import importlib

    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-irnet")
    assert pm.name == "napari-irnet"
    assert pm.contributions.sample_data, "a sample-data contribution is declared"
    for cmd in pm.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.python_name


def test_npe2_validate_cli():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-irnet"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_sample_data_contribution_returns_image_and_truth():
    from napari_irnet._napari.sample_data import sample_cells

    layers = sample_cells()
    (img, img_kw, img_type), (lab, lab_kw, lab_type) = layers
    assert img_type == "image" and img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert lab_type == "labels" and lab.shape == (256, 256) and lab.max() >= 3
    assert img_kw["metadata"]["napari_irnet"]["labels"]


@pytest.mark.viewer
def test_sample_opens_in_viewer(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-irnet", "synthetic_cells")
    names = [layer.name for layer in viewer.layers]
    assert "synthetic cells" in names and "ground truth" in names
    assert viewer.layers["synthetic cells"].rgb


def test_device_choices_and_description():
    import torch

    from napari_irnet.pipeline.inference import describe_device, device_choices, resolve_device

    choices = device_choices()
    assert choices[:2] == ["auto", "cpu"]
    assert ("cuda" in choices) == torch.cuda.is_available()
    assert describe_device("cpu") == "cpu"
    assert describe_device("auto") == str(resolve_device("auto"))
    if not torch.cuda.is_available():
        text = describe_device("cuda")
        assert text.startswith("unavailable (") and "CUDA" in text


def test_unknown_or_absent_devices_are_clear_value_errors():
    import torch

    from napari_irnet.pipeline.inference import DeviceError, resolve_device

    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda'.*use cpu"):
            resolve_device("cuda")
    assert issubclass(DeviceError, RuntimeError)  # describe_device and older callers catch RuntimeError


_BAD_PARAMS = [
    ("TrainParams", {"cam_epochs": 0}, "cam_epochs"),
    ("TrainParams", {"irn_epochs": -1}, "irn_epochs"),
    ("TrainParams", {"finetune_epochs": 2.5}, "finetune_epochs"),
    ("TrainParams", {"cam_learning_rate": float("nan")}, "cam_learning_rate"),
    ("TrainParams", {"finetune_learning_rate": float("inf")}, "finetune_learning_rate"),
    ("TrainParams", {"irn_batch_size": 0}, "irn_batch_size"),
    ("TrainParams", {"cam_resize_long": (640, 320)}, "cam_resize_long"),
    ("TrainParams", {"irn_rescale": (0.0, 1.5)}, "irn_rescale"),
    ("TrainParams", {"train_radius": 0}, "train_radius"),
    ("TrainParams", {"momentum": 1.0}, "momentum"),
    ("TrainParams", {"correction_weight": 0}, "correction_weight"),
    ("TrainParams", {"finetune_cam": "maybe"}, "finetune_cam"),
    ("TrainParams", {"amp": 1}, "amp"),
    ("TrainParams", {"weak_displacement_weight": 1.5}, "weak_displacement_weight"),
    ("Params", {"use_crf": "maybe"}, "use_crf"),
    ("Params", {"beta": float("nan")}, "beta"),
    ("Params", {"radius": float("nan")}, "radius"),
    ("Params", {"cam_scales": (1.0, float("inf"))}, "cam_scales"),
    ("Params", {"cluster_threshold": float("inf")}, "cluster_threshold"),
    ("Params", {"seed_class_thresholds": {"a": 1.5}}, "seed_class_thresholds"),
    ("Params", {"seed_class_thresholds": {"": 0.5}}, "seed_class_thresholds"),
    ("Params", {"seed_class_thresholds": [("a", 0.5)]}, "seed_class_thresholds"),
]


@pytest.mark.parametrize("cls, values, name", _BAD_PARAMS, ids=[f"{c}-{n}" for c, _, n in _BAD_PARAMS])
def test_nonsense_parameters_are_refused_by_name(cls, values, name):
    from napari_irnet import params as p

    with pytest.raises(p.ParamError, match=f"parameter {name}=") as info:
        getattr(p, cls)(**values)
    assert info.value.name == name and isinstance(info.value, ValueError)
    base = getattr(p, cls)()
    with pytest.raises(p.ParamError):
        base.replace(**values)


def test_per_class_seed_thresholds_round_trip_and_apply_by_name():
    from napari_irnet.params import ParamError, Params

    p = Params(seed_fg_threshold=0.3, seed_class_thresholds={"rod": 0.5, "blob": 1.0})
    assert Params.from_json(p.to_json()) == p
    assert p.seed_fg_thresholds(["round", "blob", "rod"]) == (0.3, 1.0, 0.5)
    assert p.seed_fg_thresholds(["round"]) == 0.3  # no class of its own: the single threshold
    assert p.check_classes(["round", "rod", "blob"]) is p
    with pytest.raises(ParamError, match="not blob"):
        p.check_classes(["round", "rod"])
    # the defaults do not share one dict
    a, b = Params(), Params()
    a.seed_class_thresholds["x"] = 0.4
    assert b.seed_class_thresholds == {}


def test_train_params_round_trip_and_defaults_are_valid():
    from napari_irnet.params import TrainParams

    tp = TrainParams(cam_resize_long=[56, 72])
    assert tp.cam_resize_long == (56, 72)
    assert TrainParams.from_dict(tp.to_dict()) == tp


def test_waiting_openmp_threads_sleep_unless_the_user_chose(tmp_path):
    import os
    import subprocess
    import sys

    code = "import napari_irnet, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
