"""The Project panel under a (virtual) display: states, Next/Previous, autosave, Accept, reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.params import Params
from napari_irnet.synthetic import CLASS_NAMES

FAST = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False, min_fragment_fraction=0.0)
WAIT_MS = 30_000


@pytest.fixture
def samples():
    from napari_irnet.synthetic import make_dataset

    return make_dataset(4, shape=(64, 64), seed=11, prefix="p")


@pytest.fixture
def project_dir(env, samples):
    """Four images: proposed, accepted, new, proposed; a tiny checkpoint."""
    from napari_irnet.models.checkpoint import new_irnet, new_model, save_checkpoint
    from napari_irnet.store.create import create_project
    from napari_irnet.synthetic import write_dataset

    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.irn = new_irnet(model, "cam")
    model.params = FAST
    ckpt = save_checkpoint(model, env / "tiny.pt")
    ds = write_dataset(samples, env / "ds")
    project = create_project(env / "P", ds / "images", ds / "labels.csv", checkpoint=ckpt, params=FAST)
    names = project.names
    for i in (0, 1, 3):
        s = samples[i]
        inst = s.instances.astype(np.int32)
        recs = [{"id": k, "class": c, "score": 0.9} for k, c in s.instance_classes.items()]
        project.save_result(names[i], inst, recs, np.zeros_like(inst, dtype=np.uint8), "m", None)
    project.accept(names[1])
    return env / "P"


def _dock(viewer, name="Project"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-irnet", name)
    return widget


def _wait(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: widget.idle, timeout=timeout)


def _open(qtbot, viewer, project_dir, skip=True):
    widget = _dock(viewer)
    widget.skip_accepted.value = skip
    assert widget.open_project(project_dir) is not None
    _wait(qtbot, widget)
    return widget


def _states(project_dir):
    from napari_irnet.store.create import open_project

    return {n: st.state for n, st in open_project(project_dir).states().items()}


# ------------------------------------------------------------------ GUI-free


def test_reader_accepts_only_project_folders(project_dir, tmp_path):
    from napari_irnet._napari.project_reader import get_project_reader

    assert callable(get_project_reader(str(project_dir)))
    assert get_project_reader(str(tmp_path / "ds")) is None
    assert get_project_reader(str(project_dir / "images.json")) is None


# ------------------------------------------------------------------ viewer


@pytest.mark.viewer
def test_list_states_and_next_previous(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    widget = _open(qtbot, viewer, project_dir)
    names = widget.project.names
    assert list(widget.states().values()) == ["proposed", "accepted", "new", "proposed"]
    assert widget.image_list.count() == 4
    assert "accepted" in widget.image_list.item(1).text()
    assert widget.current_name == names[0]
    inst = widget.instances_layer
    assert inst is not None and inst.name == "instances"
    np.testing.assert_array_equal(inst.data, widget.project.load_masks(names[0]).labels)
    assert inst.metadata["napari_irnet"]["stage"] == "instances"
    assert widget.next() == names[2]  # the accepted one is passed over
    _wait(qtbot, widget)
    assert widget.current_name == names[2]
    assert not widget.instances_layer.data.any()  # a new image: nothing yet, paint from scratch
    images = [ly for ly in viewer.layers if ly.metadata.get("napari_irnet", {}).get("project_image")]
    assert len(images) == 1  # the previous project image was replaced
    widget.skip_accepted.value = False
    assert widget.previous() == names[1]
    _wait(qtbot, widget)
    assert widget.current_name == names[1]
    assert widget.previous() == names[0]
    _wait(qtbot, widget)
    assert widget.previous() is None  # no wrap-around
    # the viewer shortcut
    from napari_irnet._napari.project_widget import NEXT_KEY

    bound = {str(k): f for k, f in viewer.keymap.items()}
    bound[NEXT_KEY](viewer)
    _wait(qtbot, widget)
    assert widget.current_name == names[1]


@pytest.mark.viewer
def test_painting_autosaves_and_accept_survives_reopening(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    widget = _open(qtbot, viewer, project_dir)
    name = widget.current_name
    layer = widget.instances_layer
    new_id = int(layer.data.max()) + 1
    layer.paint((5, 5), new_id)  # a brush dab with a new id
    _wait(qtbot, widget)  # the debounced autosave has run
    assert _states(project_dir)[name] == "corrected"
    assert widget.states()[name] == "corrected"
    from napari_irnet.store.create import open_project

    masks = open_project(project_dir).load_masks(name)
    assert masks.source == "correction"
    np.testing.assert_array_equal(masks.labels, layer.data)
    assert {r["class"] for r in masks.records} <= set(widget.project.classes)
    # an edit right before Next is saved at once
    layer.paint((40, 40), new_id + 1)
    widget.next()
    after = open_project(project_dir).load_masks(name).labels
    assert (after == new_id + 1).any()
    _wait(qtbot, widget)
    widget.show_image(name)
    _wait(qtbot, widget)
    assert widget.accept()
    assert _states(project_dir)[name] == "accepted"
    np.testing.assert_array_equal(open_project(project_dir).load_masks(name).labels, after)

    fresh = make_napari_viewer_proxy()
    again = _open(qtbot, fresh, project_dir, skip=False)
    assert again.states()[name] == "accepted"
    np.testing.assert_array_equal(again.instances_layer.data, after)
    again.reopen()
    assert _states(project_dir)[name] == "corrected"


@pytest.mark.viewer
def test_failed_save_keeps_the_edits_and_saves_them_later(make_napari_viewer_proxy, qtbot, project_dir, monkeypatch):
    from napari_irnet.io.files import OutputError
    from napari_irnet.store.project import Project

    viewer = make_napari_viewer_proxy()
    widget = _open(qtbot, viewer, project_dir)
    name = widget.current_name
    real = Project.save_correction

    def full_disk(self, *args, **kwargs):
        raise OutputError("instances.tif: cannot write (No space left on device)")

    monkeypatch.setattr(Project, "save_correction", full_disk)
    layer = widget.instances_layer
    layer.paint((5, 5), 77)
    assert not widget.save_now()
    assert "NOT SAVED" in widget.status.value
    assert _states(project_dir)[name] == "proposed"
    widget.next()  # moving on keeps the edits in memory
    _wait(qtbot, widget)
    monkeypatch.setattr(Project, "save_correction", real)
    assert widget.save_now()  # the next save stores them
    assert _states(project_dir)[name] == "corrected"
    from napari_irnet.store.create import open_project

    assert (open_project(project_dir).load_masks(name).labels == 77).any()


@pytest.mark.viewer
def test_closing_the_viewer_saves_pending_edits(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    widget = _open(qtbot, viewer, project_dir)
    name = widget.current_name
    widget.instances_layer.paint((5, 5), 55)
    viewer.close()  # before the autosave delay is over
    assert _states(project_dir)[name] == "corrected"


@pytest.mark.viewer
def test_irnet_panel_runs_on_the_project_image_and_keeps_autosaving(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    panel = _dock(viewer, "IRNet")
    widget = _open(qtbot, viewer, project_dir, skip=False)
    widget.show_image(1)  # the accepted image
    _wait(qtbot, widget)
    assert panel.image.value.metadata["napari_irnet"]["image_id"] == widget.image_layer.metadata["napari_irnet"]["image_id"]
    assert panel.checkpoint.value  # the project's checkpoint
    _wait(qtbot, panel)
    stored = widget.instances_layer.data.copy()
    panel.run_button.native.click()  # Run hands the masks over to the panel's own layer
    _wait(qtbot, panel)
    qtbot.waitUntil(lambda: widget.instances_layer is not None and widget.instances_layer.metadata["napari_irnet"]["stage"] == "instances" and panel.session is not None, timeout=WAIT_MS)
    qtbot.wait(50)
    inst = [ly for ly in viewer.layers if ly.metadata.get("napari_irnet", {}).get("stage") in ("instances", "project instances")]
    assert len(inst) == 1 and inst[0].name == "instances"
    np.testing.assert_array_equal(widget.instances_layer.data, stored)  # accepted: kept as it was
    name = widget.current_name
    widget.instances_layer.paint((3, 3), 99)
    _wait(qtbot, widget)
    from napari_irnet.store.create import open_project

    assert (open_project(project_dir).load_masks(name).labels == 99).any()
    # the panel's own edits are autosaved too
    victim = int(stored[stored > 0][0])
    point = np.argwhere(widget.instances_layer.data == victim)[0]
    assert panel.pick_at(point) == victim
    panel.delete_picked()
    _wait(qtbot, widget)
    masks = open_project(project_dir).load_masks(name)
    assert not (masks.labels == victim).any() and (masks.labels == 99).any()
    assert _states(project_dir)[name] == "corrected"
    widget.accept()  # through the panel: both agree
    assert panel.session.state == "accepted" and _states(project_dir)[name] == "accepted"


def _run_panel(qtbot, panel):
    _wait(qtbot, panel)
    panel.run_button.native.click()
    _wait(qtbot, panel)
    qtbot.waitUntil(lambda: panel.session is not None, timeout=WAIT_MS)


@pytest.mark.viewer
def test_a_runs_proposal_is_stored_and_shown_again_on_the_next_visit(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    panel = _dock(viewer, "IRNet")
    widget = _open(qtbot, viewer, project_dir, skip=False)
    widget.show_image(2)  # a new image: nothing stored yet
    _wait(qtbot, widget)
    panel.param_widgets["instance_bg_threshold"].value = 0.0  # every pixel in some instance
    _run_panel(qtbot, panel)
    proposed = panel.session.labels.copy()
    assert proposed.max() > 0
    name = widget.current_name
    assert _states(project_dir)[name] == "proposed" and widget.states()[name] == "proposed"
    widget.next()
    _wait(qtbot, widget)
    widget.previous()
    _wait(qtbot, widget)
    assert widget.current_name == name
    np.testing.assert_array_equal(widget.instances_layer.data, proposed)  # shown without running again


@pytest.mark.viewer
def test_the_irnet_panel_stores_into_the_project_only_and_frees_each_image(make_napari_viewer_proxy, qtbot, project_dir, env):
    from napari_irnet.store.create import open_project

    viewer = make_napari_viewer_proxy()
    panel = _dock(viewer, "IRNet")
    widget = _open(qtbot, viewer, project_dir, skip=False)
    _run_panel(qtbot, panel)
    name = widget.current_name
    victim = int(np.unique(panel.session.labels[panel.session.labels > 0])[0])
    region = panel.session.labels == victim
    panel.pick_at(np.argwhere(region)[0])
    panel.delete_picked()
    _wait(qtbot, widget)
    masks = open_project(project_dir).load_masks(name)
    assert masks.source == "correction" and not masks.labels[region].any()
    np.testing.assert_array_equal(masks.background, region)  # the annotator background, in the project
    assert not (env / "data" / "corrections").exists()  # one store: nothing in the per-image folders
    for _ in range(2):
        widget.next()
        _wait(qtbot, widget)
        _run_panel(qtbot, panel)
    assert len(panel.sessions) == 1  # the images left behind were freed
    widget.show_image(0)
    _wait(qtbot, widget)
    assert not widget.instances_layer.data[region].any()
    _run_panel(qtbot, panel)  # a new run on the image honours the stored background
    assert not panel.session.labels[region].any()


@pytest.mark.viewer
def test_predict_all_proposes_every_new_image_in_the_background(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    widget = _open(qtbot, viewer, project_dir, skip=False)
    widget.show_image(2)  # the new image is shown while it is predicted
    _wait(qtbot, widget)
    assert widget.predict_button.enabled
    widget.predict_button.native.click()
    _wait(qtbot, widget)
    states = _states(project_dir)
    assert "new" not in states.values() and states[widget.project.names[1]] == "accepted"
    assert list(widget.states().values()) == list(states.values())
    assert widget.current_name == widget.project.names[2]
    assert "instances" in widget.status.value or "predicted" in widget.status.value


@pytest.mark.viewer
def test_an_irnet_panel_docked_later_works_on_the_shown_image_with_the_projects_checkpoint(make_napari_viewer_proxy, qtbot, project_dir):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="another image")  # first in the list
    widget = _open(qtbot, viewer, project_dir, skip=False)
    widget.show_image(3)
    _wait(qtbot, widget)
    panel = _dock(viewer, "IRNet")  # the viewer context tells it the image and the checkpoint
    assert panel.image.value == widget.image_layer
    assert str(panel.checkpoint.value) == str(widget.project.checkpoint_path)
    _run_panel(qtbot, panel)
    assert panel.session.image_id == widget.image_layer.metadata["napari_irnet"]["image_id"]
