"""The Fine-tune panel under a (virtual) display: images, Start to the end, Stop, versions, Compare."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_irnet.params import TrainParams

WAIT_MS = 60_000


@pytest.fixture
def checkpoint(fast_checkpoint):
    return fast_checkpoint


@pytest.fixture
def sample(cells_sample):
    return cells_sample


def _save_corrections(name, sample, state="accepted"):
    from napari_irnet.annotation.masks import InstanceInfo, Masks
    from napari_irnet.store.fingerprints import image_fingerprint
    from napari_irnet.store.folder import corrections_folder, save_corrections

    inst = sample.instances.astype(np.int32)
    table = {int(i): InstanceInfo(sample.labels[0], 1.0, "accepted") for i in np.unique(inst) if i}
    corr = Masks.from_table(inst, table, state=state, image_name=name, fingerprint=image_fingerprint(sample.image), classes=list(sample.labels))
    return save_corrections(corrections_folder(name, sample.image), corr)


def _digest(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _dock(viewer, name="Fine-tune IRNet"):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-irnet", name)
    return widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.idle, timeout=WAIT_MS)


# --------------------------------------------------------------------------


@pytest.mark.viewer
def test_panel_docks_and_lists_only_corrected_or_accepted_images(make_napari_viewer_proxy, qtbot, env, sample):
    _save_corrections("cells", sample, "accepted")
    other = sample.image[::-1].copy()
    viewer = make_napari_viewer_proxy()
    viewer.add_image(sample.image, name="cells", rgb=True)
    viewer.add_image(other, name="untouched", rgb=True)
    widget = _dock(viewer)
    _wait(qtbot, widget)
    from napari_irnet._napari.finetune_jobs import PANEL_TRAIN_PARAMS

    for name in PANEL_TRAIN_PARAMS:
        assert name in TrainParams.__dataclass_fields__ and getattr(widget, name).name == name
    assert set(widget.settings()) == set(PANEL_TRAIN_PARAMS)
    assert widget.device_in_use.value == "cpu"
    assert widget.refresh_images() == ["cells"]
    assert list(widget.images.value) == ["cells"]
    assert widget.selected_images()[0].state == "accepted"
    # a broken checkpoint: an error notification naming it, not a crash
    from napari.utils.notifications import notification_manager

    bad = env / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    widget.set_checkpoint(bad)
    _wait(qtbot, widget)
    n = len(notification_manager.records)
    widget.start()
    _wait(qtbot, widget)
    assert any("broken.pt" in str(r.message) for r in notification_manager.records[n:])
    assert "failed" in widget.status.value and widget.start_button.enabled
    # proposed corrections are not training data
    _save_corrections("cells", sample, "proposed")
    assert widget.refresh_images() == []
    # Start without a checkpoint or images warns instead of running
    widget.checkpoint.value = None
    widget.start()
    assert widget.idle and widget.loss_plot.points == []


@pytest.mark.viewer
def test_refresh_looks_at_each_image_once_and_rereads_only_changed_corrections(
    make_napari_viewer_proxy, qtbot, env, sample, monkeypatch
):
    import napari_irnet._napari.widgets.training_images as fw

    _save_corrections("cells", sample, "accepted")
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(sample.image, name="cells", rgb=True)
    widget = _dock(viewer)
    _wait(qtbot, widget)
    assert widget.refresh_images() == ["cells"]
    looked_up, real = [], fw.store_for_layer
    monkeypatch.setattr(fw, "store_for_layer", lambda layer, *a, **k: looked_up.append(layer.name) or real(layer, *a, **k))
    for _ in range(3):
        assert widget.refresh_images() == ["cells"]
    assert looked_up == []  # same pixels: no new conversion or fingerprint
    _save_corrections("cells", sample, "proposed")
    assert widget.refresh_images() == [] and looked_up == []  # the corrections are read again, the pixels are not
    layer.data = np.ascontiguousarray(sample.image[::-1])  # new pixels: another image, looked up once
    assert widget.refresh_images() == []
    assert widget.refresh_images() == []
    assert looked_up == ["cells"]


@pytest.mark.viewer
def test_start_runs_to_a_new_version_the_irnet_panel_uses_and_compare_adds_layers(
    make_napari_viewer_proxy, qtbot, checkpoint, sample
):
    from napari_irnet.models.versions import VersionStore

    _save_corrections("cells", sample)
    original = _digest(checkpoint)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(sample.image, name="cells", rgb=True, metadata={"napari_irnet": {"labels": list(sample.labels)}})
    irnet = _dock(viewer, "IRNet")
    irnet.set_checkpoint(checkpoint)
    qtbot.waitUntil(lambda: irnet.idle, timeout=WAIT_MS)
    irnet.run()
    qtbot.waitUntil(lambda: irnet.idle, timeout=WAIT_MS)
    assert irnet.session is not None and irnet.session.state == "accepted"

    widget = _dock(viewer)
    _wait(qtbot, widget)
    assert str(widget.checkpoint.value) == str(checkpoint)  # taken from the IRNet panel
    assert widget.finetune_epochs.value == 1 and widget.correction_weight.value == 2  # the checkpoint's settings
    assert list(widget.images.value) == ["cells"]
    widget.start()
    assert widget.running
    _wait(qtbot, widget)
    result = widget.last_result
    assert result is not None and not result.stopped, widget.status.value
    # 1 image drawn twice per epoch, batch 2: one step
    assert [s for s, _ in widget.loss_plot.points] == [1] and np.isfinite(widget.loss_plot.points[0][1])
    widget.loss_plot.grab()  # paints without error
    store = VersionStore(checkpoint.parent / "tiny.versions")
    assert [r["version"] for r in store.versions()] == [1] and store.versions()[0]["parent"] == 0
    new = store.folder / "v0001.pt"
    assert new.is_file() and result.path == str(new)
    assert _digest(checkpoint) == original
    assert store.load(1).history[-1]["stage"] == "finetune"
    # the IRNet panel runs the next image with the new version; fine-tuning goes on from it
    assert str(irnet.checkpoint.value) == str(new)
    assert str(widget.checkpoint.value) == str(new)
    assert list(widget.versions.choices) == [str(checkpoint), str(new)] and widget.versions.value == str(new)

    widget.compare()
    _wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert "instances (v1)" in names and "semantic (v1)" in names, widget.status.value
    assert "instances" in names
    assert viewer.layers["instances (v1)"].data.shape == (96, 96)
    # the shown instances are the accepted ones: the old model's proposal comes as a layer too
    assert "instances (tiny)" in names
    # the IRNet panel still finds its own instances layer, not the comparison
    from napari_irnet._napari.layer_sync import find_layer

    assert find_layer(viewer.layers, irnet.session.image_id, "instances").name == "instances"

    # roll back: the original again, here and in the IRNet panel
    widget.use_version(str(checkpoint))
    assert str(irnet.checkpoint.value) == str(checkpoint) and str(widget.checkpoint.value) == str(checkpoint)
    _wait(qtbot, widget)
    qtbot.waitUntil(lambda: irnet.idle, timeout=WAIT_MS)


@pytest.mark.viewer
def test_stop_mid_run_makes_no_version_and_keeps_the_checkpoint(make_napari_viewer_proxy, qtbot, checkpoint, sample):
    _save_corrections("cells", sample)
    original = _digest(checkpoint)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(sample.image, name="cells", rgb=True)
    widget = _dock(viewer)
    widget.set_checkpoint(checkpoint)
    _wait(qtbot, widget)
    widget.finetune_epochs.value = 200  # far more steps than the test waits for
    widget.start()
    qtbot.waitUntil(lambda: len(widget.loss_plot.points) >= 1, timeout=WAIT_MS)
    widget.stop()
    _wait(qtbot, widget)
    result = widget.last_result
    assert result is not None and result.stopped and result.path is None
    assert 1 <= len(widget.loss_plot.points) < 200
    assert not list((checkpoint.parent / "tiny.versions").glob("v*.pt"))
    assert _digest(checkpoint) == original
    assert widget.start_button.enabled and not widget.stop_button.enabled
    assert "no new version" in widget.status.value
    stopped_at = widget.loss_plot.points[-1][0]
    # Start again resumes: the plot keeps the steps before the stop
    widget.start()
    qtbot.waitUntil(lambda: len(widget.loss_plot.points) >= 1, timeout=WAIT_MS)
    steps = [s for s, _ in widget.loss_plot.points]
    assert steps[0] == 1 and stopped_at + 1 in steps
    # closing the viewer mid-run stops the training too
    viewer.close()
    _wait(qtbot, widget)
    assert not list((checkpoint.parent / "tiny.versions").glob("v*.pt"))


@pytest.mark.viewer
def test_every_panel_fits_in_420_pixels_even_with_a_long_status(make_napari_viewer_proxy, qtbot, env):
    viewer = make_napari_viewer_proxy()
    panels = [_dock(viewer, name) for name in ("IRNet", "Project", "Fine-tune IRNet")]
    for panel in panels:
        panel.status.value = "fine-tuning failed: " + "a long message without end " * 12
    qtbot.wait(50)
    for panel in panels:
        assert panel.native.minimumSizeHint().width() <= 420, type(panel).__name__
        assert panel.native.minimumWidth() <= 420, type(panel).__name__


@pytest.mark.viewer
def test_images_the_irnet_panel_ran_on_train_with_its_intensity_choice(make_napari_viewer_proxy, qtbot, checkpoint, sample):
    """A 16-bit image run with the percentile intensity: fine-tuning takes the pixels the networks saw, not the layer's as shown."""
    from napari_irnet._napari.layers import layer_to_rgb8

    viewer = make_napari_viewer_proxy()
    gray = (sample.image.mean(axis=2) * 4).astype(np.uint16)
    gray[0, 0] = 60000  # one bright pixel: the full range squeezes the rest, the percentiles do not
    layer = viewer.add_image(gray, name="cells16", metadata={"napari_irnet": {"labels": list(sample.labels)}})
    irnet = _dock(viewer, "IRNet")
    irnet.set_checkpoint(checkpoint)
    _wait(qtbot, irnet)
    irnet.inputs.intensity.value = "percentile"
    irnet.run()
    _wait(qtbot, irnet)
    assert irnet.session is not None, irnet.status.value
    irnet.accept()
    seen = irnet.session.image
    assert not np.array_equal(seen, layer_to_rgb8(layer))  # the choice matters for this image
    widget = _dock(viewer)
    _wait(qtbot, widget)
    assert widget.refresh_images() == ["cells16"]
    np.testing.assert_array_equal(widget.selected_images()[0].image, seen)
