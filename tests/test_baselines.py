"""instances_from_class_map: the connected-components baseline of the quality benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from napari_irnet.pipeline.stages import instances_from_class_map


def test_components_per_class_with_max_scores():
    cls = np.zeros((6, 8), int)
    cls[0:2, 0:2] = 1  # class 0, 4 px
    cls[0:2, 2:4] = 2  # class 1, touching the first: a separate instance (other class)
    cls[4:6, 0:3] = 1  # class 0 again, not connected: a second instance
    cls[5, 7] = 1  # a 1-pixel fragment
    score = np.linspace(0, 1, 48).reshape(6, 8)
    res = instances_from_class_map(cls, score, min_fragment_fraction=2 / 48)
    assert res.labels.max() == 4 and len(res.records) == 4
    by_id = {r["id"]: r for r in res.records}
    for r in res.records:
        mask = res.labels == r["id"]
        assert np.all(cls[mask] == r["class_id"] + 1)
        assert r["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        expected = 0.0 if r["area"] < 2 else score[mask].max()
        assert r["score"] == pytest.approx(expected)
    assert sorted(r["class_id"] for r in by_id.values()) == [0, 0, 0, 1]


def test_touching_objects_of_one_class_merge_and_defaults():
    cls = np.zeros((4, 6), int)
    cls[:, 0:3] = 3
    cls[:, 3:6] = 3
    res = instances_from_class_map(cls)
    assert res.labels.max() == 1 and res.records[0]["score"] == 1.0 and res.records[0]["class_id"] == 2
    assert instances_from_class_map(np.zeros((3, 3), int)).records == []
    with pytest.raises(ValueError):
        instances_from_class_map(cls, np.zeros((2, 2)))
