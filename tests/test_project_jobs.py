"""The Project panel's GUI-free steps: moving through a project, the records it stores, snapshots."""

from __future__ import annotations

import numpy as np

from napari_irnet._napari.project_jobs import records_for, step_index
from napari_irnet.annotation.masks import Masks, cleared_since


def test_step_index_skips_accepted_and_stops_at_the_ends():
    states = ["proposed", "accepted", "new", "accepted"]
    assert step_index(states, None, 1) == 0
    assert step_index(states, 0, 1) == 1
    assert step_index(states, 0, 1, skip_accepted=True) == 2
    assert step_index(states, 2, 1, skip_accepted=True) is None
    assert step_index(states, 2, -1, skip_accepted=True) == 0
    assert step_index(states, 0, -1) is None
    assert step_index(states, None, -1, skip_accepted=True) == 2


def test_records_give_unknown_ids_the_fallback_class():
    labels = np.array([[0, 1], [2, 5]])
    recs = records_for(labels, {1: "rod", 2: "cat"}, ["rod", "blob"], "blob", {1: 0.5})
    assert recs == [{"id": 1, "class": "rod", "score": 0.5}, {"id": 2, "class": "blob", "score": 1.0}, {"id": 5, "class": "blob", "score": 1.0}]


def test_masks_compare_by_state_pixels_background_and_classes():
    labels = np.array([[0, 1], [2, 5]])
    a = Masks(labels, [{"id": 1, "class": "rod"}], state="corrected")
    b = a.copy()
    assert a.same_as(b) and b.labels is not a.labels and b.records[0] is not a.records[0]
    assert not a.same_as(Masks(labels, [{"id": 1, "class": "blob"}], state="corrected"))
    assert not a.same_as(Masks(labels, [{"id": 1, "class": "rod"}], state="accepted"))
    assert not a.same_as(Masks(labels, [{"id": 1, "class": "rod"}], state="corrected", background=labels == 0))
    assert a.same_as(Masks(labels, [{"id": 1, "class": "rod"}], state="corrected", background=np.zeros((2, 2), bool)))


def test_cleared_since_adds_erased_pixels_and_gives_back_repainted_ones():
    before = Masks(np.array([[1, 1], [0, 2]]), state="corrected", background=np.array([[False, False], [True, False]]))
    after = np.array([[1, 0], [3, 0]])  # (0, 1) erased, (1, 0) painted over, instance 2 deleted
    assert cleared_since(before, after).tolist() == [[False, True], [False, True]]
    assert cleared_since(before, np.array([[1, 1], [9, 2]])) is None  # nothing left cleared
    assert cleared_since(None, after) is None and cleared_since(before, np.zeros((3, 3), int)) is None
