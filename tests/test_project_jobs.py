"""The Project panel's GUI-free steps: moving through a project, the records it stores, snapshots."""

from __future__ import annotations

import numpy as np

from napari_irnet._napari.project_jobs import Snapshot, records_for, step_index


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
    a = Snapshot(labels, {1: "rod"}, state="corrected")
    assert a.same_as(a.copy()) and not a.same_as(Snapshot(labels, {1: "blob"}, state="corrected"))
