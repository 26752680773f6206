"""The napari widget under a (virtual) display: run, live parameters, corrections, undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_irnet.core.params import Params

pytestmark = pytest.mark.viewer

FAST = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False, min_fragment_fraction=0.0)
WAIT_MS = 30_000


@pytest.fixture
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint(FAST)


@pytest.fixture
def image():
    from napari_irnet.core.synthetic import make_dataset

    return make_dataset(1, shape=(96, 96), seed=5, prefix="w")[0]


def _dock(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")
    return widget


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.idle, timeout=WAIT_MS)


def _run(qtbot, viewer, checkpoint, image):
    viewer.add_image(image.image, name="cells", rgb=True, metadata={"napari_irnet": {"labels": list(image.labels)}})
    widget = _dock(viewer)
    widget.set_checkpoint(checkpoint)
    _wait_idle(qtbot, widget)
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.session is not None, widget.status.value
    return widget


def _layer(viewer, stage):
    from napari_irnet._layers import stage_of

    found = [layer for layer in viewer.layers if (stage_of(layer.metadata) or {}).get("stage") == stage]
    return found[0] if found else None


def _blobs(shape=(96, 96)) -> np.ndarray:
    """Three known instances: two squares and two touching discs (one id)."""
    labels = np.zeros(shape, np.int32)
    labels[5:25, 5:25] = 1
    labels[5:25, 40:60] = 2
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels[((yy - 70) ** 2 + (xx - 30) ** 2 < 100) | ((yy - 70) ** 2 + (xx - 46) ** 2 < 100)] = 3
    return labels


def _with_blobs(qtbot, viewer, checkpoint, image):
    widget = _run(qtbot, viewer, checkpoint, image)
    widget.set_instances(_blobs(), classes={1: "round", 2: "round", 3: "blob"})
    return widget


# --------------------------------------------------------------------------


def test_widget_docks_and_has_a_slider_per_live_parameter(make_napari_viewer_proxy, qtbot, env):
    from napari_irnet._widget import LIVE_PARAMS

    viewer = make_napari_viewer_proxy()
    widget = _dock(viewer)
    assert widget.run_button.enabled and widget.session is None
    for name in LIVE_PARAMS:
        assert name in Params.__dataclass_fields__
        assert widget.param_widgets[name].name == name
    _wait_idle(qtbot, widget)


def test_run_gives_every_stage_layer_with_the_right_shape(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _run(qtbot, viewer, checkpoint, image)
    n_classes = len(image.labels)
    cams = [layer for layer in viewer.layers if (layer.metadata.get("napari_irnet") or {}).get("stage") == "CAM"]
    assert len(cams) == n_classes and all(c.data.shape == (96, 96) for c in cams)
    assert _layer(viewer, "seeds").data.shape == (96, 96)
    assert _layer(viewer, "boundary").data.shape == (24, 24)
    vec = _layer(viewer, "displacement").data
    assert vec.ndim == 3 and vec.shape[1:] == (2, 2) and 0 < len(vec) <= 24 * 24
    pts = _layer(viewer, "centroids")
    assert pts.data.shape[1] == 2 and {"instance", "class"} <= set(pts.features.columns)
    inst = _layer(viewer, "instances")
    assert inst.data.shape == (96, 96)
    assert {"index", "class", "score", "state"} <= set(inst.features.columns)
    assert _layer(viewer, "semantic").data.shape == (96, 96)
    assert widget.device_in_use.value == "cpu"
    # every layer says which image it belongs to
    image_id = viewer.layers["cells"].metadata["napari_irnet"]["image_id"]
    assert all(_layer(viewer, s).metadata["napari_irnet"]["image"] == image_id for s in ("seeds", "instances", "semantic"))
    # stage visibility from the widget
    widget.show_stage["boundary"].value = True
    assert _layer(viewer, "boundary").visible
    widget.show_stage["instances"].value = False
    assert not _layer(viewer, "instances").visible


def test_slider_change_updates_instances_without_the_networks(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _run(qtbot, viewer, checkpoint, image)
    before = _layer(viewer, "instances").data.copy()
    cache = widget.session.result.cache
    widget.param_widgets["instance_bg_threshold"].value = 0.95
    _wait_idle(qtbot, widget)
    after = _layer(viewer, "instances").data
    assert widget.session.params.instance_bg_threshold == pytest.approx(0.95)
    assert widget.session.result.cache is cache  # no new network run
    assert (after > 0).sum() < (before > 0).sum()
    # undo restores the instances and the slider
    widget.undo()
    _wait_idle(qtbot, widget)
    np.testing.assert_array_equal(_layer(viewer, "instances").data, before)
    assert widget.param_widgets["instance_bg_threshold"].value == pytest.approx(FAST.instance_bg_threshold)


def test_moving_a_centroid_changes_the_instances(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _run(qtbot, viewer, checkpoint, image)
    widget.param_widgets["instance_bg_threshold"].value = 0.0  # every pixel belongs to some instance
    _wait_idle(qtbot, widget)
    before = _layer(viewer, "instances").data.copy()
    # two centres, left and right: the image splits into two instances per class at most
    points = _layer(viewer, "centroids")
    points.data = np.array([[48.0, 10.0], [48.0, 86.0]])
    _wait_idle(qtbot, widget)
    after = _layer(viewer, "instances").data
    assert widget.session.points_edited
    assert not np.array_equal(before, after)
    assert widget.session.history.names()[-1] == "edit centroids"
    # undo brings the centroids and instances back
    widget.undo()
    _wait_idle(qtbot, widget)
    np.testing.assert_array_equal(_layer(viewer, "instances").data, before)
    assert not widget.session.points_edited


def test_merge_split_delete_class_and_undo(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    start = layer.data.copy()
    # split square 1 along a drawn line
    widget.split(line=np.array([[0.0, 15.0], [30.0, 15.0]]))
    assert layer.data[15, 8] != layer.data[15, 20] and {layer.data[15, 8], layer.data[15, 20]} == {1, 4}
    assert widget.session.table[4].state == "edited"
    # merge the two halves again by picking them
    widget.pick_at((15, 8))
    widget.pick_at((15, 20))
    widget.merge_picked()
    np.testing.assert_array_equal(layer.data > 0, start > 0)
    assert len(np.unique(layer.data[5:25, 5:25])) == 1
    # split the two touching discs between two clicked seeds
    widget.pick_at((70, 27))
    widget.pick_at((70, 49))
    widget.split()
    assert layer.data[70, 27] == 3 and layer.data[70, 49] == 4  # the lowest free id
    assert 36 <= np.nonzero((layer.data == 3).any(axis=0))[0].max() <= 40  # cut at the neck, x = 38
    # class change and delete
    widget.pick_at((70, 49))
    widget.set_class_of_picked("rod")
    assert widget.session.table[4].class_name == "rod"
    assert "rod" in list(layer.features["class"])
    widget.pick_at((15, 50))
    widget.delete_picked()
    assert 2 not in layer.data
    # next free id selects an unused label for painting
    assert widget.next_free_id() == 5 and layer.selected_label == 5 and layer.mode == "paint"
    # undo step by step back to the start, then redo one step
    names = widget.session.history.names()
    assert names[-5:] == ["split [1] -> [1, 4]", "merge [1, 4]", "split [3] -> [3, 4]", "class of [4] -> rod", "delete [2]"]
    for _ in range(5):
        widget.undo()
    np.testing.assert_array_equal(layer.data, start)
    assert widget.session.table[3].class_name == "blob"
    widget.redo()
    assert layer.data[15, 8] != layer.data[15, 20]


def test_refused_edit_is_a_warning_not_an_exception(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.pick_at((15, 15))
    widget.merge_picked()  # one pick only
    widget.split(line=np.array([[90.0, 90.0], [95.0, 95.0]]))  # crosses nothing
    np.testing.assert_array_equal(_layer(viewer, "instances").data, _blobs())


def test_painting_marks_instances_edited_and_is_undoable(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    layer.selected_label = 7
    layer.paint((50, 80), 7)  # napari's own brush
    qtbot.waitUntil(lambda: 7 in widget.session.table, timeout=WAIT_MS)
    assert widget.session.table[7].state == "edited"
    assert widget.session.history.names()[-1] == "paint"
    widget.undo()
    assert 7 not in layer.data


def test_accepted_instances_survive_a_rerun_and_slider_changes(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.accept()
    assert widget.session.state == "accepted"
    accepted = _layer(viewer, "instances").data.copy()
    widget.param_widgets["instance_bg_threshold"].value = 0.6
    _wait_idle(qtbot, widget)
    widget.run()
    _wait_idle(qtbot, widget)
    np.testing.assert_array_equal(_layer(viewer, "instances").data, accepted)
    assert set(widget.session.table[i].state for i in (1, 2, 3)) == {"accepted"}


def test_edited_instances_are_kept_when_parameters_change(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.pick_at((15, 15))
    widget.pick_at((15, 50))
    widget.merge_picked()
    merged = _layer(viewer, "instances").data == 1
    widget.param_widgets["instance_bg_threshold"].value = 0.05
    _wait_idle(qtbot, widget)
    after = _layer(viewer, "instances").data
    np.testing.assert_array_equal(after == 1, merged)  # the merged instance is untouched
    # the discard button asks first
    widget._confirm = lambda question: False
    widget.discard_corrections()
    np.testing.assert_array_equal(_layer(viewer, "instances").data == 1, merged)


def test_corrections_survive_closing_the_viewer(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.accept()
    folder = widget.session.folder
    assert (folder / "instances.tif").is_file() and (folder / "corrections.json").is_file()
    viewer2 = make_napari_viewer_proxy()
    widget2 = _run(qtbot, viewer2, checkpoint, image)
    assert widget2.session.state == "accepted"
    np.testing.assert_array_equal(_layer(viewer2, "instances").data, _blobs())
    assert widget2.session.table[3].class_name == "blob"


def test_renamed_or_deleted_layers_do_not_break_the_widget(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    _layer(viewer, "instances").name = "my masks"
    viewer.layers.remove(_layer(viewer, "semantic"))
    widget.pick_at((15, 15))
    widget.delete_picked()
    assert viewer.layers["my masks"].data[15, 15] == 0
    widget.param_widgets["semantic_bg_threshold"].value = 0.5
    _wait_idle(qtbot, widget)
    assert _layer(viewer, "semantic") is not None
    viewer.layers.remove(viewer.layers["my masks"])
    widget.pick_at((15, 50))
    widget.delete_picked()
    assert _layer(viewer, "instances").data[15, 50] == 0


def test_worker_error_is_a_notification_not_a_crash(make_napari_viewer_proxy, qtbot, env, image):
    from napari.utils.notifications import notification_manager

    bad = env / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image.image, name="cells", rgb=True)
    widget = _dock(viewer)
    widget.set_checkpoint(bad)
    _wait_idle(qtbot, widget)
    n = len(notification_manager.records)
    widget.run()
    _wait_idle(qtbot, widget)
    messages = [str(r.message) for r in notification_manager.records[n:]]
    assert any("broken.pt" in m for m in messages), messages
    assert "failed" in widget.status.value and widget.run_button.enabled and widget.session is None


def test_sample_with_the_bundled_demo_model_in_one_click(make_napari_viewer_proxy, qtbot, env):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-irnet", "synthetic_cells")
    widget = _dock(viewer)
    _wait_idle(qtbot, widget)
    assert "demo" in str(widget.checkpoint.value)
    assert list(widget.classes.value) == viewer.layers["synthetic cells"].metadata["napari_irnet"]["labels"]
    for name, value in {"walk_steps": 32}.items():  # keep the test fast
        widget.param_widgets[name].value = value
    widget.run()
    _wait_idle(qtbot, widget)
    inst = _layer(viewer, "instances")
    assert inst.data.shape == (256, 256) and inst.data.max() >= 3


def test_keyboard_shortcuts_on_the_instances_layer(make_napari_viewer_proxy, qtbot, checkpoint, image):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")

    def press(key):
        layer.keymap[coerce_keybinding(key)](layer)

    widget.pick_at((15, 15))
    widget.pick_at((15, 50))
    press("Shift-M")
    assert set(np.unique(layer.data)) == {0, 1, 3}
    press("Control-Z")  # ours on this layer, not napari's paint-only undo
    np.testing.assert_array_equal(layer.data, _blobs())
    press("Control-Shift-Z")
    assert 2 not in layer.data
    press("Shift-A")
    assert widget.session.state == "accepted"


def test_adding_and_deleting_centroids_reclusters(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _run(qtbot, viewer, checkpoint, image)
    widget.param_widgets["instance_bg_threshold"].value = 0.0
    _wait_idle(qtbot, widget)
    points = _layer(viewer, "centroids")
    points.data = np.array([[48.0, 48.0]])  # one centre: at most one instance per class
    _wait_idle(qtbot, widget)
    one = len(np.unique(_layer(viewer, "instances").data)) - 1
    points.add(np.array([[10.0, 10.0], [85.0, 85.0], [10.0, 85.0]]))
    _wait_idle(qtbot, widget)
    more = len(np.unique(_layer(viewer, "instances").data)) - 1
    assert one <= len(image.labels) and more > one


def test_a_cam_only_checkpoint_is_refused_when_chosen(make_napari_viewer_proxy, qtbot, env, make_tiny_checkpoint):
    from napari_irnet.core.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(make_tiny_checkpoint(FAST))
    model.history.append({"stage": "cam", "steps": 2})  # what train-cam writes: IRNet with random heads
    path = save_checkpoint(model, env / "cam-only.pt")
    widget = _dock(make_napari_viewer_proxy())
    widget.set_checkpoint(path)
    qtbot.waitUntil(lambda: "cannot use this checkpoint" in widget.status.value, timeout=WAIT_MS)
    assert "IRNet was never trained" in widget.status.value and "train-irn" in widget.status.value
