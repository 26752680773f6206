"""The napari widget under a (virtual) display: run, live parameters, corrections, undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_irnet.params import Params

pytestmark = pytest.mark.viewer

FAST = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False, min_fragment_fraction=0.0)
WAIT_MS = 30_000


@pytest.fixture
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint(FAST)


@pytest.fixture
def image():
    from napari_irnet.synthetic import make_dataset

    return make_dataset(1, shape=(96, 96), seed=5, prefix="w")[0]


def _dock(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")
    return widget


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.idle, timeout=WAIT_MS)


def _ready(qtbot, viewer, checkpoint, image):
    """The panel docked beside the image, its checkpoint loaded: ready to Run."""
    viewer.add_image(image.image, name="cells", rgb=True, metadata={"napari_irnet": {"labels": list(image.labels)}})
    widget = _dock(viewer)
    widget.set_checkpoint(checkpoint)
    _wait_idle(qtbot, widget)
    return widget


def _run(qtbot, viewer, checkpoint, image):
    widget = _ready(qtbot, viewer, checkpoint, image)
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.session is not None, widget.status.value
    return widget


def _layer(viewer, stage):
    from napari_irnet._napari.layers import stage_of

    found = [layer for layer in viewer.layers if (stage_of(layer.metadata) or {}).get("stage") == stage]
    return found[0] if found else None


def _active_stage(viewer):
    from napari_irnet._napari.layers import stage_of

    return (stage_of(viewer.layers.selection.active.metadata) or {}).get("stage")


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
    from napari_irnet._napari.widgets.parameters import LIVE_PARAMS

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
    widget.edits.confirm = lambda question: False
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
    from napari_irnet.models.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(make_tiny_checkpoint(FAST))
    model.history.append({"stage": "cam", "steps": 2})  # what train-cam writes: IRNet with random heads
    path = save_checkpoint(model, env / "cam-only.pt")
    widget = _dock(make_napari_viewer_proxy())
    widget.set_checkpoint(path)
    qtbot.waitUntil(lambda: "cannot use this checkpoint" in widget.status.value, timeout=WAIT_MS)
    assert "IRNet was never trained" in widget.status.value and "train-irn" in widget.status.value


# -------------------------------------------------------------------------- the annotator's loop (issue: corrections that hold)


def _proposed(qtbot, viewer, checkpoint, image):
    """A run whose proposal has instances (every pixel belongs to some instance)."""
    widget = _run(qtbot, viewer, checkpoint, image)
    widget.param_widgets["instance_bg_threshold"].value = 0.0
    _wait_idle(qtbot, widget)
    labels = _layer(viewer, "instances").data
    assert labels.max() > 0
    return widget


def _biggest(labels):
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return int(ids[counts.argmax()])


def test_a_deleted_proposal_stays_deleted_after_a_slider_change_and_a_reopen(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _proposed(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    target = _biggest(layer.data)
    region = layer.data == target
    widget.pick_at(np.argwhere(region)[0])
    widget.delete_picked()
    assert not layer.data[region].any()
    widget.param_widgets["instance_bg_threshold"].value = 0.01  # re-proposes every pixel
    _wait_idle(qtbot, widget)
    assert not layer.data[region].any()
    widget.param_widgets["beta"].value = 12.0  # the walk again
    _wait_idle(qtbot, widget)
    assert not layer.data[region].any()
    # reopening the image (a new viewer, the same pixels) brings the deletion back, not the instance
    viewer2 = make_napari_viewer_proxy()
    widget2 = _run(qtbot, viewer2, checkpoint, image)
    widget2.param_widgets["instance_bg_threshold"].value = 0.0
    _wait_idle(qtbot, widget2)
    assert not _layer(viewer2, "instances").data[region].any()


def test_an_erased_halo_does_not_return_as_a_ring(make_napari_viewer_proxy, qtbot, checkpoint, image):
    from scipy.ndimage import binary_erosion

    viewer = make_napari_viewer_proxy()
    widget = _proposed(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    target = _biggest(layer.data)
    region = layer.data == target
    halo = region & ~binary_erosion(region, iterations=2)
    layer.data_setitem(np.nonzero(halo), 0)  # the eraser
    layer.events.paint(value=[])
    qtbot.waitUntil(lambda: widget.session.history.names()[-1] == "paint", timeout=WAIT_MS)
    widget.param_widgets["instance_bg_threshold"].value = 0.01
    _wait_idle(qtbot, widget)
    assert not layer.data[halo].any()
    assert len(np.unique(layer.data[region])) <= 2  # the core and background: no new ring-shaped instance


def test_unedited_instances_keep_their_ids_across_slider_changes(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _proposed(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    ids = [int(i) for i in np.unique(layer.data) if i]
    assert len(ids) >= 3
    widget.pick_at(np.argwhere(layer.data == ids[-1])[0])
    widget.set_class_of_picked("blob")  # the last instance edited
    before = layer.data.copy()
    widget.param_widgets["instance_bg_threshold"].value = 0.02  # a re-run: the proposals come back numbered afresh
    _wait_idle(qtbot, widget)
    after = layer.data
    for i in ids[:-1]:  # every unedited instance keeps its id where it still is
        assert (after[before == i] == i).mean() > 0.5


def test_the_instances_colormap_is_set_again_only_when_a_colour_changes(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _proposed(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    sets = []
    layer.events.colormap.connect(lambda event: sets.append(event))
    widget.param_widgets["instance_bg_threshold"].value = widget.params.instance_bg_threshold + 0.01
    _wait_idle(qtbot, widget)
    assert not sets  # the same ids in the same classes: napari would repaint the whole map for nothing
    ids = [int(i) for i in np.unique(layer.data) if i]
    widget.pick_at(np.argwhere(layer.data == ids[0])[0])
    other = next(c for c in widget.session.model_classes if c != widget.session.annotation.info(ids[0]).class_name)
    widget.set_class_of_picked(other)
    _wait_idle(qtbot, widget)
    assert sets  # a class change changes a colour
    from napari_irnet._napari.layers import instance_colour

    assert np.allclose(layer.colormap.color_dict[ids[0]], instance_colour(widget.session.model_classes.index(other), ids[0]))


def test_after_run_and_edits_the_instances_layer_is_active_and_keys_work_from_the_viewer(make_napari_viewer_proxy, qtbot, checkpoint, image):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    assert _active_stage(viewer) == "instances"
    viewer.layers.selection.active = _layer(viewer, "centroids")  # another layer active: the viewer's keys still work
    widget.pick_at((15, 15))
    widget.pick_at((15, 50))
    viewer.keymap[coerce_keybinding("Shift-M")](viewer)
    assert set(np.unique(layer.data)) == {0, 1, 3}
    assert _active_stage(viewer) == "instances"
    viewer.keymap[coerce_keybinding("Control-Z")](viewer)
    np.testing.assert_array_equal(layer.data, _blobs())
    # after a split along a drawn line the instances layer is active again, the line layer no longer drawing
    widget.draw_split_line()
    line_layer = viewer.layers.selection.active
    line_layer.add_paths(np.array([[0.0, 15.0], [30.0, 15.0]]))
    widget.split()
    assert _active_stage(viewer) == "instances" and line_layer.mode == "pan_zoom"
    assert layer.data[15, 8] != layer.data[15, 20]


def test_shift_click_adds_the_missed_object_in_one_undoable_step(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    widget.pick_at((15, 15))
    widget.delete_picked()  # the object at (15, 15) is now missed
    n = len(widget.session.history.names())

    class Click:  # what napari hands a mouse callback: a press and release, no drag
        type = "mouse_press"
        position = (15.0, 15.0)
        modifiers = ("Shift",)

    gen = widget.edits.on_instances_click(layer, Click())
    next(gen)
    Click.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    new = int(layer.data[15, 15])
    assert new and widget.session.table[new].state == "edited"
    assert widget.session.table[new].class_name == widget.edit_class.value
    assert len(widget.session.history.names()) == n + 1 and widget.session.history.names()[-1].startswith("add")
    widget.undo()
    assert layer.data[15, 15] == 0


def test_the_class_menu_starts_on_the_images_class_and_says_what_new_instances_get(make_napari_viewer_proxy, qtbot, checkpoint):
    from napari_irnet.synthetic import make_dataset

    a, b = make_dataset(8, shape=(64, 64), seed=3, prefix="m")[:8:7]
    viewer = make_napari_viewer_proxy()
    first = _run(qtbot, viewer, checkpoint, a)
    assert first.edit_class.value == a.labels[0]
    other = next(c for c in ("round", "rod", "blob") if c not in b.labels)
    first.edit_class.value = other  # a class the next image does not have
    layer = viewer.add_image(b.image, name="second", rgb=True, metadata={"napari_irnet": {"labels": list(b.labels)}})
    first.image.value = layer
    first.classes.value = list(b.labels)
    first.run()
    _wait_idle(qtbot, first)
    assert first.edit_class.value in b.labels
    assert first.edit_class.value in first.new_class_note.value
    painted = _layer_of(viewer, first.session.image_id, "instances")
    painted.selected_label = 99
    painted.paint((5, 5), 99)
    qtbot.waitUntil(lambda: 99 in first.session.table, timeout=WAIT_MS)
    assert first.session.table[99].class_name in b.labels


def _layer_of(viewer, image_id, stage):
    from napari_irnet._napari.layer_sync import find_layer

    return find_layer(viewer.layers, image_id, stage)


def test_two_images_give_no_numbered_layer_names_and_closing_one_frees_its_session(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _run(qtbot, viewer, checkpoint, image)
    layer = viewer.add_image(image.image[::-1].copy(), name="flipped", rgb=True, metadata={"napari_irnet": {"labels": list(image.labels)}})
    widget.image.value = layer
    widget.run()
    _wait_idle(qtbot, widget)
    assert not [ly.name for ly in viewer.layers if "[" in ly.name]
    assert "instances (flipped)" in [ly.name for ly in viewer.layers]
    assert len(widget.sessions) == 2
    viewer.layers.remove(layer)
    assert len(widget.sessions) == 1


def test_renaming_the_layer_keeps_its_corrections(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.accept()
    viewer2 = make_napari_viewer_proxy()
    viewer2.add_image(image.image, name="renamed", rgb=True, metadata={"napari_irnet": {"labels": list(image.labels)}})
    widget2 = _dock(viewer2)
    widget2.set_checkpoint(checkpoint)
    _wait_idle(qtbot, widget2)
    widget2.run()
    _wait_idle(qtbot, widget2)
    assert widget2.session.state == "accepted"
    np.testing.assert_array_equal(_layer(viewer2, "instances").data, _blobs())


def test_closing_the_viewer_during_a_run_or_a_checkpoint_load_is_safe(make_napari_viewer_proxy, qtbot, checkpoint, image, monkeypatch):
    import threading

    import napari_irnet._napari.model_loader as loader_module
    import napari_irnet._napari.runner as runner_module

    release = threading.Event()
    real_run, real_load = runner_module.run_job, loader_module.load_model

    def slow_run(*args, **kwargs):
        yield "waiting"
        release.wait(10)
        return (yield from real_run(*args, **kwargs))

    def slow_load(path):
        release.wait(10)
        return real_load(path)

    monkeypatch.setattr(runner_module, "run_job", slow_run)
    viewer = make_napari_viewer_proxy()
    widget = _run_started(qtbot, viewer, checkpoint, image)
    monkeypatch.setattr(loader_module, "load_model", slow_load)
    widget.set_checkpoint(checkpoint.with_name("other.pt"))  # a load in flight too
    workers = [widget.runner.worker, widget.loader.worker]
    viewer.close()
    release.set()
    for w in workers:
        qtbot.waitUntil(lambda w=w: not w.is_running, timeout=WAIT_MS)
    qtbot.wait(200)  # the workers' finished signals reach the (closed) panel: nothing may raise


def _run_started(qtbot, viewer, checkpoint, image):
    viewer.add_image(image.image, name="cells", rgb=True, metadata={"napari_irnet": {"labels": list(image.labels)}})
    widget = _dock(viewer)
    widget.set_checkpoint(checkpoint)
    _wait_idle(qtbot, widget)
    widget.run()
    return widget


def test_the_panel_fits_in_420_pixels(make_napari_viewer_proxy, qtbot, checkpoint, image):
    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    widget.status.value = "a very long status line " * 20
    qtbot.wait(50)
    assert widget.native.minimumSizeHint().width() <= 420
    assert widget.native.minimumWidth() <= 420


def test_non_8_bit_images_follow_the_layers_contrast_limits(make_napari_viewer_proxy, qtbot, image):
    from napari_irnet._napari.layers import layer_to_rgb8

    viewer = make_napari_viewer_proxy()
    gray8 = image.image.mean(axis=2).astype(np.uint8)
    gray8[0, 0], gray8[0, 1] = 0, 255  # the full 8-bit range, as a real image may have
    as8 = viewer.add_image(gray8, name="8-bit")
    as16 = viewer.add_image(gray8.astype(np.uint16), name="16-bit", contrast_limits=(0, 255))
    np.testing.assert_array_equal(layer_to_rgb8(as8), layer_to_rgb8(as16))  # the same pixels, the same input
    as16.contrast_limits = (0, 127)  # what the annotator sees changes the input
    assert layer_to_rgb8(as16).mean() > layer_to_rgb8(as8).mean()
    stack = viewer.add_image(np.stack([gray8, 255 - gray8, gray8 // 2]).astype(np.uint16), name="stack", rgb=False, contrast_limits=(0, 255))
    widget = _dock(viewer)
    widget.channels.value = "1"  # the second channel, as gray
    rgb = widget.inputs.network_input(stack)
    assert rgb.shape == gray8.shape + (3,)
    np.testing.assert_array_equal(rgb[..., 0], 255 - gray8)
    np.testing.assert_array_equal(rgb[..., 2], 255 - gray8)


def test_canvas_feedback_colours_by_class_text_under_centroids_outlines_and_legend(make_napari_viewer_proxy, qtbot, checkpoint, image):
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_irnet._napari.layers import CLASS_COLOURS, STATE_COLOURS

    viewer = make_napari_viewer_proxy()
    widget = _proposed(qtbot, viewer, checkpoint, image)
    layer = _layer(viewer, "instances")
    classes = widget.session.model_classes
    ids = [int(i) for i in np.unique(layer.data) if i]
    for i in ids:  # each instance in a shade of its class's colour
        base = transform_color(CLASS_COLOURS[classes.index(widget.session.table[i].class_name)])[0][:3]
        colour = layer.colormap.map(i)[:3]
        assert np.corrcoef(base, colour)[0, 1] > 0.9 or np.allclose(base, colour, atol=0.25)
    before = {i: layer.colormap.map(i).copy() for i in ids}
    # text under the centroids: id and class of the instance there
    points = _layer(viewer, "centroids")
    texts = [str(t) for t in points.text.values]
    feats = points.features
    assert any(t for t in texts)
    for t, i, c in zip(texts, feats["instance"], feats["class"]):
        assert t == (f"{i} {c}" if i else "")
    # an edited instance gets an outline in the corrections layer, an accepted one another colour
    target = ids[0]
    widget.pick_at(np.argwhere(layer.data == target)[0])
    widget.set_class_of_picked("rod")
    outline = _layer(viewer, "corrections")
    assert outline.contour > 0 and (outline.data == target).sum() == (layer.data == target).sum()
    np.testing.assert_allclose(outline.colormap.map(target), transform_color(STATE_COLOURS["edited"])[0])
    assert "rod" in [str(t) for t in points.text.values][feats["instance"].tolist().index(target)] if target in feats["instance"].tolist() else True
    assert "rod" in widget.status.value and "1 edited" in widget.status.value
    outline_sets: list = []
    outline.events.data.connect(outline_sets.append)
    widget.param_widgets["beta"].value = 11.0  # an update keeps the others' colours
    _wait_idle(qtbot, widget)
    assert not outline_sets  # the re-run kept the edited instance: its outline is not drawn again
    for i in ids[1:]:
        if (layer.data == i).any():
            np.testing.assert_allclose(layer.colormap.map(i), before[i])
    widget.accept()
    np.testing.assert_allclose(outline.colormap.map(target), transform_color(STATE_COLOURS["accepted"])[0])
    # the legend names the image's classes and the outline colours
    for name in list(image.labels) + ["edited", "accepted"]:
        assert name in widget.legend.value
    for stage in ("seeds", "semantic"):  # the same class colours
        cmap = _layer(viewer, stage).colormap
        np.testing.assert_allclose(cmap.map(1)[:3], transform_color(CLASS_COLOURS[0])[0][:3])


_CLOSE_AND_EXIT = """
import time
import napari
import napari_irnet._napari.model_loader as w
real = w.load_model
def slow(path):
    time.sleep(2)
    return real(path)
w.load_model = slow
viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")  # starts loading the demo checkpoint
viewer.close()
print("closed")
"""


def test_python_exits_cleanly_when_the_viewer_closes_while_a_checkpoint_loads(env):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CLOSE_AND_EXIT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "closed" in out.stdout


def test_merging_instances_that_do_not_touch_warns(make_napari_viewer_proxy, qtbot, checkpoint, image):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer_proxy()
    widget = _with_blobs(qtbot, viewer, checkpoint, image)
    n = len(notification_manager.records)
    widget.pick_at((15, 15))
    widget.pick_at((15, 50))  # 15 px to the right of the first square
    widget.merge_picked()
    messages = [str(r.message) for r in notification_manager.records[n:]]
    assert any("do not touch" in m and "15 px" in m for m in messages), messages
    assert 2 not in _layer(viewer, "instances").data  # merged all the same (undo takes it back)


def test_a_first_run_adds_its_layers_in_separate_turns_of_the_event_loop(make_napari_viewer_proxy, qtbot, checkpoint, image):
    """Each new layer takes napari a few hundred ms to set up: ten in one turn froze the viewer for a second or more."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer_proxy()
    widget = _ready(qtbot, viewer, checkpoint, image)
    marks, turn_between = [], []

    def on_insert(event):
        turn_between.append(marks[-1]["ran"] if marks else True)  # did the loop turn since the last insertion?
        mark = {"ran": False}
        marks.append(mark)
        QTimer.singleShot(0, lambda: mark.update(ran=True))

    viewer.layers.events.inserted.connect(on_insert)
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.session is not None and _layer(viewer, "instances") is not None and _layer(viewer, "centroids") is not None
    assert len(turn_between) >= 8 and all(turn_between)
    assert _active_stage(viewer) == "instances"  # shown once the last layer is there


def test_a_run_shows_its_progress_on_the_panels_own_bar(make_napari_viewer_proxy, qtbot, checkpoint, image):
    # not napari's progress: its animated activity indicator redraws the whole window
    # (with software OpenGL a sixth of a 2-core CPU during a Run)
    from napari.utils import progress

    from napari_irnet._napari.jobs import RUN_STEPS

    viewer = make_napari_viewer_proxy()
    widget = _ready(qtbot, viewer, checkpoint, image)
    bar = widget.status_box.progress
    assert bar.native.isHidden()
    seen = []
    bar.changed.connect(lambda value: seen.append((value, bar.max, not bar.native.isHidden(), len(progress._all_instances))))
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.session is not None, widget.status.value
    assert (RUN_STEPS, RUN_STEPS, True, 0) in seen  # the Run's own steps, then
    assert any(total > RUN_STEPS and value == total for value, total, _, _ in seen)  # a walk to its last step
    assert all(visible and napari_bars == 0 for _, _, visible, napari_bars in seen)
    assert bar.native.isHidden()  # when the Run ends
