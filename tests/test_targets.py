"""Exact targets from instance maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.pipeline.path_index import PathIndex, pair_labels
from napari_irnet.training.targets import boundary_target, class_map_target, displacement_target, relation_labels


def _two_touching() -> np.ndarray:
    inst = np.zeros((16, 16), np.int32)
    inst[4:12, 2:8] = 7
    inst[4:12, 8:14] = 9  # touches 7, same class in the seeds
    return inst


def test_touching_instances_of_one_class_give_negative_pairs():
    inst = _two_touching()
    labels = relation_labels(inst)
    assert set(np.unique(labels)) == {0, 1, 2}
    index = PathIndex(3, inst.shape)
    bg_pos, fg_pos, neg = pair_labels(torch.from_numpy(labels), index)
    # the same map as class seeds (both instances class 1) has no negative pairs between them
    seeds = (inst > 0).astype(np.int64)
    _, fg_class, neg_class = pair_labels(torch.from_numpy(seeds), index)
    assert neg.sum() > neg_class.sum()
    assert fg_pos.sum() < fg_class.sum()
    assert bg_pos.any()


def test_unreviewed_pixels_are_ignored_and_255_is_skipped():
    inst = np.arange(300, dtype=np.int32).reshape(15, 20)  # 0 = background + 299 instances
    labels = relation_labels(inst)
    assert labels.max() == 300 and not (labels == 255).any()
    assert len(np.unique(labels)) == 300
    reviewed = np.zeros_like(inst, bool)
    reviewed[:5] = True
    masked = relation_labels(inst, reviewed)
    assert (masked[5:] == 255).all() and (masked[:5] == labels[:5]).all()
    with pytest.raises(ValueError, match="differ in shape"):
        relation_labels(inst, reviewed[:3])


def test_displacement_target_points_at_the_instance_centroid():
    inst = np.zeros((32, 32), np.int32)
    inst[0:12, 0:12] = 1  # grid cells 0..2 in y and x: centroid (1, 1)
    disp, valid = displacement_target(inst, stride=4)
    assert disp.shape == (2, 8, 8) and valid.sum() == 9
    np.testing.assert_allclose(disp[:, 0, 0], [1.0, 1.0])
    np.testing.assert_allclose(disp[:, 2, 1], [-1.0, 0.0])
    assert (disp[:, ~valid] == 0).all()


def test_boundary_target_marks_the_edge_between_touching_instances():
    b = boundary_target(_two_touching(), stride=1)
    assert b[8, 7] and b[8, 8]  # both sides of the shared edge
    assert not b[8, 4] and not b[0, 0]


def test_relation_dataset_keeps_instance_values_above_255():
    from napari_irnet.params import TrainParams
    from napari_irnet.training.datasets import LabelledImage, RelationDataset

    labels = np.zeros((64, 64), np.int32)
    labels[:, :] = np.arange(64)[None, :] // 4 * 40 + 1  # 1, 41, ..., 601 in 4 px stripes
    tp = TrainParams(irn_crop_size=64, irn_rescale=(1.0, 1.0))
    image = np.zeros((64, 64, 3), np.uint8)
    _, y = RelationDataset([LabelledImage("a", image, [0])], [labels], tp)[0]
    assert y.shape == (16, 16)
    values = set(np.unique(y.numpy()))
    assert values == set(range(1, 602, 40))  # one per stripe, none cast to 8 bits


def test_class_map_target_gives_each_instance_its_class_and_ignores_the_unknown():
    inst = _two_touching()
    inst[0:2, 0:2] = 300  # an instance whose class nobody gave
    out = class_map_target(inst, {7: 0, 9: 2})
    assert out.dtype == np.int32
    assert (out[inst == 7] == 1).all() and (out[inst == 9] == 3).all()
    assert (out[inst == 300] == 255).all() and (out[inst == 0] == 0).all()
    reviewed = np.zeros(inst.shape, bool)
    reviewed[:, :8] = True
    partly = class_map_target(inst, {7: 0, 9: 2}, reviewed)
    assert (partly[:, 8:] == 255).all() and np.array_equal(partly[:, :8], out[:, :8])
    with pytest.raises(ValueError, match="out of range"):
        class_map_target(inst, {7: 254})
    with pytest.raises(ValueError, match="2-D"):
        class_map_target(inst[None], {7: 0})


def test_the_annotators_background_is_true_background_even_where_unreviewed():
    from napari_irnet.training.finetune_data import correction_class_maps

    inst = np.zeros((8, 8), np.int32)
    inst[1:4, 1:4] = 5
    reviewed = np.zeros((8, 8), bool)
    reviewed[:4, :4] = True
    cleared = np.zeros((8, 8), bool)
    cleared[5:8, 5:8] = True  # a deleted proposal, outside the reviewed part
    rel = relation_labels(inst, reviewed, cleared)
    assert (rel[5:8, 5:8] == 0).all() and (rel[0, 6] == 255) and rel[2, 2] not in (0, 255)
    cls = correction_class_maps([inst], [{5: "rod"}], ["round", "rod"], [reviewed], [cleared])[0]
    assert (cls[5:8, 5:8] == 0).all() and cls[0, 6] == 255 and cls[2, 2] == 2
