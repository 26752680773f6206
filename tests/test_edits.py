"""Instance-map edits: merge, split, delete, class changes, protection, undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_irnet.annotation.edits import EditError, delete, instance_gap, merge, merge_proposal, split_by_line, split_by_seeds
from napari_irnet.annotation.history import EditRecord, History, LabelDiff
from napari_irnet.annotation.masks import InstanceInfo, features_table, instance_at, next_free_id, set_class, set_state, table_from_records


def _map() -> np.ndarray:
    """Three instances: a rectangle (1), a square (2), two touching discs as one instance (3)."""
    labels = np.zeros((40, 60), np.int32)
    labels[2:10, 2:20] = 1
    labels[2:10, 30:38] = 2
    yy, xx = np.mgrid[0:40, 0:60]
    discs = ((yy - 28) ** 2 + (xx - 15) ** 2 < 49) | ((yy - 28) ** 2 + (xx - 27) ** 2 < 49)
    labels[discs] = 3
    return labels


def test_merge_gives_one_id_and_diff_undoes_exactly():
    labels = _map()
    original = labels.copy()
    diff = merge(labels, [1, 2])
    diff.apply(labels)
    assert set(np.unique(labels)) == {0, 1, 3}
    assert (labels[original == 2] == 1).all()
    diff.apply(labels, reverse=True)
    np.testing.assert_array_equal(labels, original)


def test_merge_needs_two_existing_instances():
    labels = _map()
    with pytest.raises(EditError):
        merge(labels, [1])
    with pytest.raises(EditError):
        merge(labels, [1, 1])
    with pytest.raises(EditError, match="id 9"):
        merge(labels, [1, 9])


def test_delete_clears_the_instance():
    labels = _map()
    diff = delete(labels, [2])
    assert len(diff) == 64
    diff.apply(labels)
    assert 2 not in labels
    with pytest.raises(EditError):
        delete(labels, [2])


def test_split_by_line_cuts_across_and_fills_the_line():
    labels = _map()
    before = labels.copy()
    diff, new_ids = split_by_line(labels, np.array([[0.0, 11.0], [12.0, 11.0]]))
    diff.apply(labels)
    assert new_ids == [4]
    # every pixel of instance 1 now belongs to 1 or 4, the line pixels included
    assert set(np.unique(labels[before == 1])) == {1, 4}
    assert (labels[before != 1] == before[before != 1]).all()
    # the larger part keeps the id
    assert (labels == 1).sum() >= (labels == 4).sum()
    left, right = labels[5, 3], labels[5, 19]
    assert {left, right} == {1, 4}


def test_split_by_line_that_does_not_cut_through_is_refused():
    labels = _map()
    with pytest.raises(EditError, match="does not cut"):
        split_by_line(labels, np.array([[5.0, 5.0], [5.0, 12.0]]))
    with pytest.raises(EditError, match="crosses no instance"):
        split_by_line(labels, np.array([[20.0, 50.0], [30.0, 55.0]]))


def test_split_by_two_seeds_parts_touching_discs_at_the_neck():
    labels = _map()
    before = labels.copy()
    diff, new_ids = split_by_seeds(labels, np.array([[28.0, 13.0], [28.0, 29.0]]))
    diff.apply(labels)
    assert new_ids == [4]
    assert labels[28, 13] == 3 and labels[28, 29] == 4
    # the cut is at the neck, x = 21, between the disc centres 15 and 27
    cols3 = np.nonzero((labels == 3).any(axis=0))[0]
    cols4 = np.nonzero((labels == 4).any(axis=0))[0]
    assert 19 <= cols3.max() <= 22 and 20 <= cols4.min() <= 23
    assert (labels[before != 3] == before[before != 3]).all()


def test_split_by_seeds_with_image_gradient():
    labels = _map()
    image = np.zeros(labels.shape)
    image[:, :21] = 1.0  # an edge at x = 21
    diff, _ = split_by_seeds(labels, np.array([[28.0, 13.0], [28.0, 29.0]]), image=image)
    diff.apply(labels)
    assert labels[28, 19] == 3 and labels[28, 23] == 4


def test_split_by_seeds_refuses_bad_seeds():
    labels = _map()
    with pytest.raises(EditError, match="different instances"):
        split_by_seeds(labels, np.array([[5.0, 5.0], [5.0, 33.0]]))
    with pytest.raises(EditError, match="inside an instance"):
        split_by_seeds(labels, np.array([[5.0, 5.0], [39.0, 59.0]]))
    with pytest.raises(EditError):
        split_by_seeds(labels, np.array([[5.0, 5.0]]))


def test_next_free_id_and_instance_at():
    labels = _map()
    assert next_free_id(labels) == 4
    assert next_free_id(labels, {9: None}) == 10
    assert next_free_id(np.zeros((3, 3), np.int32)) == 1
    assert instance_at(labels, (5.2, 33.7)) == 2
    assert instance_at(labels, (-1, 3)) == 0 and instance_at(labels, (100, 3)) == 0


def test_instance_table_and_features():
    records = [{"id": 1, "class_id": 0, "score": 0.5}, {"id": 2, "class_id": 1, "score": 0.9}]
    table = table_from_records(records, ["round", "rod"])
    assert table[2] == InstanceInfo("rod", 0.9, "proposed")
    table = set_class(table, [1], "rod")
    assert table[1].class_name == "rod" and table[1].state == "edited"
    table = set_state(table, [2], "accepted")
    table = set_class(table, [2], "round")
    assert table[2].state == "accepted"
    feats = features_table(_map(), table, default_class="blob")
    assert list(feats["index"]) == [0, 1, 2, 3]
    assert list(feats["class"]) == ["", "rod", "round", "blob"]
    assert list(feats["state"]) == ["background", "edited", "accepted", "edited"]
    assert feats["area"][2] == 64
    with pytest.raises(ValueError):
        InstanceInfo("x", state="bogus")


def test_merge_proposal_keeps_edited_and_accepted_instances():
    current = _map()
    table = {1: InstanceInfo("a", 1.0, "accepted"), 2: InstanceInfo("a", 0.5, "proposed"), 3: InstanceInfo("b", 1.0, "edited")}
    proposed = np.zeros_like(current)
    proposed[0:12, 0:40] = 1  # one big proposal over instances 1 and 2
    proposed[30:40, 40:60] = 2
    ptable = {1: InstanceInfo("a", 0.7), 2: InstanceInfo("b", 0.6)}
    out, out_table = merge_proposal(proposed, ptable, current, table)
    # protected ids and pixels unchanged
    for i in (1, 3):
        np.testing.assert_array_equal(out == i, current == i)
        assert out_table[i] == table[i]
    # what is left of the big proposal covers the unedited instance 2 and keeps its id
    assert out[5, 33] == 2 and out_table[2] == ptable[1]
    # a proposal overlapping nothing gets an id above every id in use
    assert out[35, 50] == 4 and out_table[4] == ptable[2]


def test_merge_proposal_keeps_ids_of_unedited_instances_and_the_annotators_background():
    current = _map()
    table = {i: InstanceInfo("a", 0.5) for i in (1, 2, 3)}
    # the next proposal numbers the same objects differently and grows them a little
    proposed = np.zeros_like(current)
    proposed[current == 3] = 1
    proposed[1:11, 29:39] = 2
    proposed[1:11, 1:21] = 3
    ptable = {i: InstanceInfo("b", 0.9) for i in (1, 2, 3)}
    out, _ = merge_proposal(proposed, ptable, current, table)
    assert out[28, 15] == 3 and out[5, 33] == 2 and out[5, 5] == 1
    # pixels the annotator cleared stay clear, whatever is proposed there
    background = np.zeros(current.shape, bool)
    background[1:11, 1:21] = True
    out, out_table = merge_proposal(proposed, ptable, current, table, background)
    assert not out[background].any() and 1 not in out_table and out.dtype == np.int32
    # both at once: an accepted instance inside the cleared area keeps its pixels, the rest stays clear
    table[3] = InstanceInfo("a", 0.5, "accepted")
    background[20:, :] = True
    out, out_table = merge_proposal(proposed, ptable, current, table, background)
    np.testing.assert_array_equal(out == 3, current == 3)
    assert out_table[3] == table[3] and not out[background & (current != 3)].any() and out.dtype == np.int32


def test_instance_gap_says_whether_instances_touch():
    labels = np.zeros((20, 40), np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:12] = 2  # touches 1
    labels[2:8, 30:35] = 3  # 18 columns from 2
    assert instance_gap(labels, [1, 2]) == 0
    assert instance_gap(labels, [1, 2, 3]) == pytest.approx(18)
    labels[8, 8] = 4  # diagonal neighbour of 1
    assert instance_gap(labels, [1, 4]) == 0


def test_diff_composition_equals_doing_both():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (20, 20))
    b = a.copy()
    b[rng.random(a.shape) < 0.3] = 7
    c = b.copy()
    c[rng.random(a.shape) < 0.3] = 0
    c[0, 0] = a[0, 0]  # a pixel changed and changed back
    both = LabelDiff.between(a, b).then(LabelDiff.between(b, c))
    x = a.copy()
    both.apply(x)
    np.testing.assert_array_equal(x, c)
    both.apply(x, reverse=True)
    np.testing.assert_array_equal(x, a)
    assert len(both) == int((a != c).sum())


def test_history_undo_redo_and_update_coalescing():
    h = History(limit=3)
    assert h.undo() is None
    d = LabelDiff.empty((2, 2))
    h.push(EditRecord("a", d, {"x": 0}, {"x": 1}))
    h.push(EditRecord("u1", d, {"p": 0}, {"p": 1}, kind="update"))
    h.push(EditRecord("u2", d, {"p": 1}, {"p": 2}, kind="update"))
    assert h.names() == ["a", "u2"]
    rec = h.undo()
    assert rec.before == {"p": 0} and rec.after == {"p": 2}
    assert h.can_redo and h.redo() is rec
    for name in "bcd":
        h.push(EditRecord(name, d))
    assert h.names() == ["b", "c", "d"]  # limit
    h.undo()
    h.push(EditRecord("e", d))
    assert not h.can_redo


def test_accept_all_marks_every_present_instance():
    from napari_irnet.annotation.masks import InstanceInfo, accept_all

    labels = np.array([[0, 1, 1], [2, 2, 5]], np.int32)
    table = {1: InstanceInfo("a", 0.7, "proposed"), 2: InstanceInfo("b", 0.4, "edited"), 9: InstanceInfo("a", 0.2, "proposed")}
    out = accept_all(labels, table, "c")
    assert out[1] == InstanceInfo("a", 0.7, "accepted")
    assert out[2] == InstanceInfo("b", 0.4, "accepted")
    assert out[5] == InstanceInfo("c", 1.0, "accepted")  # painted with a new id
    assert out[9] == table[9]  # no longer in the map: untouched
    assert table[1].state == "proposed"  # the input is not changed
