"""The Qt-free annotation session: corrections that hold, edit rules, undo, click to add, storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.annotation.edits import EditError
from napari_irnet.annotation.masks import InstanceInfo
from napari_irnet.annotation.session import AnnotationSession


def _proposal(shift: int = 0) -> tuple[np.ndarray, dict[int, InstanceInfo]]:
    """Three proposed instances; ``shift`` grows them a little and numbers them in reverse, as a re-run might."""
    labels = np.zeros((40, 60), np.int32)
    boxes = [(2, 12, 2, 20), (2, 12, 30, 40), (20, 36, 8, 30)]
    ids = [1, 2, 3] if shift == 0 else [3, 1, 2]
    for i, (y0, y1, x0, x1) in zip(ids, boxes):
        labels[max(y0 - shift, 0) : y1 + shift, max(x0 - shift, 0) : x1 + shift] = i
    return labels, {i: InstanceInfo("round", 0.5 + 0.1 * i) for i in ids}


def _session() -> AnnotationSession:
    labels, table = _proposal()
    session = AnnotationSession(labels, table, classes=["round", "rod"])
    session.proposal = (labels.copy(), dict(table))
    return session


def test_a_deleted_instance_stays_deleted_through_reruns_and_undo_brings_it_back():
    s = _session()
    s.delete([2])
    assert 2 not in s.labels and s.background[5, 35] and s.state == "corrected"
    s.apply_proposal(*_proposal())  # a slider change proposes it again
    assert not s.labels[2:12, 30:40].any()
    s.apply_proposal(*_proposal(shift=1))  # grown and renumbered
    assert not s.labels[2:12, 30:40].any()
    s.undo()
    s.undo()
    s.undo()
    assert (s.labels[2:12, 30:40] == 2).all() and not s.background.any()


def test_an_erased_halo_does_not_come_back_as_a_ring():
    s = _session()
    halo = np.zeros(s.shape, bool)
    halo[20:36, 8:30] = True
    halo[23:33, 11:27] = False
    s.erase(halo)
    assert s.table[3].state == "edited"
    s.apply_proposal(*_proposal(shift=1))
    assert not s.labels[halo].any()
    assert set(np.unique(s.labels[20:36, 8:30])) == {0, 3}  # no new ring-shaped instance


def test_unedited_instances_keep_their_ids_across_reruns():
    s = _session()
    s.set_class([1], "rod")  # edited: kept as it is
    s.apply_proposal(*_proposal(shift=1))  # the re-run numbers them 3, 1, 2
    assert s.labels[5, 5] == 1 and s.table[1].class_name == "rod" and s.table[1].state == "edited"
    assert s.labels[5, 35] == 2 and s.labels[25, 20] == 3
    assert s.table[2].state == "proposed" and s.table[2].score == pytest.approx(0.6)  # the new proposal's info


def test_edit_rules_merge_split_class_accept_paint():
    s = _session()
    s.table[2] = InstanceInfo("rod", 0.9)
    s.merge([1, 2])
    assert s.table[1] == InstanceInfo("round", 0.9, "edited") and 2 not in s.table
    assert s.gap([1, 3]) > 0
    _, new = s.split(line=np.array([[18.0, 20.0], [38.0, 20.0]]))
    assert new == [4] and s.table[4].class_name == "round" and s.table[4].state == "edited"
    label = s.paint(np.pad(np.ones((3, 3), bool), ((36, 1), (55, 2))))
    assert label == 5 and s.table[5] == InstanceInfo("round", 1.0, "edited")  # the default class
    s.accept()
    assert s.state == "accepted" and {s.info(i).state for i in s.instance_ids()} == {"accepted"}
    assert s.apply_proposal(*_proposal()) is None  # an accepted image keeps its instances
    with pytest.raises(EditError):
        s.merge([3])
    names = s.history.names()
    assert names[:3] == ["merge [1, 2]", "split [3] -> [3, 4]", "paint"]


def test_listeners_see_every_step_in_the_direction_applied():
    s = _session()
    seen = []
    s.connect(lambda change: seen.append((change.action, change.record.name, len(change.labels or []))))
    s.delete([1])
    s.undo()
    s.redo()
    assert [a for a, _, _ in seen] == ["edit", "undo", "redo"] and len({n for _, _, n in seen}) == 1


def test_brush_strokes_mark_instances_edited_and_new_ids_get_the_default_class():
    from napari_irnet.annotation.history import LabelDiff

    s = _session()
    s.default_class = "rod"
    painted = s.labels.copy()
    painted[38:40, 50:60] = 9
    painted[2:4, 2:20] = 0
    s.record_paint(LabelDiff.between(s.labels, painted))
    assert s.table[9] == InstanceInfo("rod", 1.0, "edited") and s.table[1].state == "edited"
    assert s.background[2:4, 2:20].all() and not s.background[38:40, 50:60].any()


def test_corrections_round_trip_and_restore_keeps_corrections(tmp_path):
    from napari_irnet.store.image_store import FolderStore

    s = _session()
    s.delete([2])
    s.set_class([3], "rod")
    store = FolderStore(tmp_path / "c")
    store.save(s.to_masks(image_name="x"))
    fresh = _session()
    fresh.restore(store.load())
    np.testing.assert_array_equal(fresh.labels, s.labels)
    np.testing.assert_array_equal(fresh.background, s.background)
    assert fresh.table[3].class_name == "rod" and fresh.state == "corrected"


# ---------------------------------------------------------------- click to add


def _outputs(shape=(64, 64), centre=(32, 36), radius=9):
    """Network outputs of one round object: its CAM, a boundary ring around it."""
    from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs

    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    dist = np.hypot(yy - centre[0], xx - centre[1])
    cam = np.clip(1.2 - dist / (1.5 * radius), 0, 1).astype(np.float32)
    gy, gx = np.mgrid[0 : H // 4, 0 : W // 4] * 4 + 2
    gdist = np.hypot(gy - centre[0], gx - centre[1])
    boundary = np.exp(-((gdist - radius - 2) ** 2) / 8).astype(np.float32)
    strided = torch.from_numpy(cam[2::4, 2::4][None].copy())
    return NetworkOutputs(shape, CAMOutput(np.array([0]), strided, torch.from_numpy(cam[None])), IRNetOutput(torch.from_numpy(boundary), torch.zeros(2, H // 4, W // 4)))


def test_click_to_add_gives_the_object_under_the_click():
    from napari_irnet.params import Params

    outputs, params = _outputs(), Params(walk_steps=64)
    truth = np.hypot(*np.mgrid[-32:32, -36:28]) < 9
    labels = np.zeros((64, 64), np.int32)
    labels[:, 50:] = 7  # an instance to the right: never overwritten
    s = AnnotationSession(labels, {7: InstanceInfo("round", 0.9, "accepted")}, classes=["round"])
    label = s.add_at((33, 35), outputs, params, "round", model_classes=["round"])
    mask = s.labels == label
    assert (mask & truth).sum() / (mask | truth).sum() > 0.6
    assert (s.labels[:, 50:] == 7).all() and s.table[label] == InstanceInfo("round", 1.0, "edited")
    s.undo()
    assert label not in s.labels
    with pytest.raises(EditError, match="instance 7"):
        s.add_at((10, 55), outputs, params)


def test_click_to_add_keeps_out_of_the_annotators_background_unless_clicked_there():
    from napari_irnet.params import Params

    outputs, params = _outputs(), Params(walk_steps=64)
    labels = np.zeros((64, 64), np.int32)
    labels[28:37, 32:41] = 1
    s = AnnotationSession(labels, {1: InstanceInfo("round")}, classes=["round"])
    s.delete([1])  # the annotator cleared a wrong proposal in the object's middle
    outside = s.add_at((32, 26), outputs, params)
    assert not (s.labels == outside)[28:37, 32:41].any()
    s.undo()
    inside = s.add_at((32, 36), outputs, params)  # a click in the cleared area: the object comes back
    assert (s.labels == inside)[28:37, 32:41].all() and not s.background[28:37, 32:41].any()


def test_label_counts_agree_with_numpy_for_small_and_large_maps():
    from napari_irnet.annotation.masks import TORCH_COUNT_MIN, label_counts

    rng = np.random.default_rng(3)
    for size in (50, TORCH_COUNT_MIN + 7):
        for dtype in (np.int32, np.int64, np.uint16):
            values = rng.integers(0, 300, size).astype(dtype)
            values[:5] = 0
            assert np.array_equal(label_counts(values, minlength=400), np.bincount(values, minlength=400))
            assert label_counts(values).dtype == np.int64
    with pytest.raises(ValueError, match="negative"):
        label_counts(np.full(TORCH_COUNT_MIN, -1, np.int32))
