"""Tests of napari_irnet.evaluation.metrics: hand-computed AP / mIoU and pycocotools cross-checks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_irnet.evaluation.coco_ap import coco_mask_ap
from napari_irnet.evaluation.metrics import (
    APAccumulator,
    average_precision,
    box_average_precision,
    instance_average_precision,
    match_predictions,
    semantic_confusion,
    semantic_miou,
)
from napari_irnet.evaluation.overlap import InstanceSet, box_iou, boxes_from_label_map, instances_from_label_map, label_map_iou, mask_iou


def rect(shape, rows, cols):
    """A bool mask with the half-open block rows[0]:rows[1], cols[0]:cols[1] set."""
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def iset(masks, labels, scores=None, difficult=None, ignore=None, shape=None):
    masks = np.array(masks, bool).reshape((len(masks), *(shape or np.shape(masks[0]))))
    return InstanceSet(masks, labels, scores, difficult, ignore)


def brute_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, g in enumerate(b):
            union = np.logical_or(p, g).sum()
            out[i, j] = np.logical_and(p, g).sum() / union if union else 0.0
    return out


# ------------------------------------------------------------------- the hand case
#
# A 10 x 40 canvas, two GT of class 0 (10 x 10 blocks):
#   G1 = columns 0-9, G2 = columns 20-29
# three predictions:
#   P1 score 0.9: columns 0-7   -> IoU with G1 = 80 / 100 = 0.8
#   P2 score 0.8: columns 10-17 -> touches no GT, a false positive ranked in the middle
#   P3 score 0.7: columns 22-31 -> IoU with G2 = 80 / 120 = 2/3
# At IoU 0.5 the ranked list is TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
# Envelope: 1 up to recall 1/2, 2/3 up to 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
# (VOC2007's 11-point rule would give (6 * 1 + 5 * 2/3) / 11 = 0.8485.)
# At 0.7 P3 fails: TP, FP, FP -> AP = 1/2.  At 0.85 nothing matches: AP = 0.

SHAPE = (10, 40)
G1, G2 = rect(SHAPE, (0, 10), (0, 10)), rect(SHAPE, (0, 10), (20, 30))
P1, P2, P3 = rect(SHAPE, (0, 10), (0, 8)), rect(SHAPE, (0, 10), (10, 18)), rect(SHAPE, (0, 10), (22, 32))


def hand_case():
    pred = iset([P1, P2, P3], [0, 0, 0], [0.9, 0.8, 0.7])
    gt = iset([G1, G2], [0, 0])
    return pred, gt


def test_hand_case_ious():
    pred, gt = hand_case()
    np.testing.assert_allclose(mask_iou(pred.masks, gt.masks), [[0.8, 0], [0, 0], [0, 2 / 3]])


def test_hand_case_ap_at_several_thresholds():
    pred, gt = hand_case()
    res = instance_average_precision([pred], [gt], iou_thresholds=(0.25, 0.5, 0.7, 0.85))
    assert res[0.5]["AP"][0] == pytest.approx(5 / 6, abs=1e-12)
    assert res[0.5]["mAP"] == pytest.approx(5 / 6, abs=1e-12)
    assert res[0.25]["AP"][0] == pytest.approx(5 / 6, abs=1e-12)
    assert res[0.7]["AP"][0] == pytest.approx(0.5, abs=1e-12)
    assert res[0.85]["AP"][0] == 0.0
    np.testing.assert_allclose(res[0.5]["precision"][0], [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(res[0.5]["recall"][0], [1 / 2, 1 / 2, 1])
    assert res[0.5]["n_pos"].tolist() == [2] and res[0.5]["n_pred"].tolist() == [3]


def test_order_of_inputs_does_not_matter_only_scores():
    pred, gt = hand_case()
    perm = [2, 0, 1]
    shuffled = iset(pred.masks[perm], pred.labels[perm], pred.scores[perm])
    a = instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"][0]
    b = instance_average_precision([shuffled], [gt], (0.5,))[0.5]["AP"][0]
    assert a == b == pytest.approx(5 / 6)
    # ranking the false positive first costs precision: FP, TP, TP -> envelope 2/3 everywhere
    reranked = iset([P1, P2, P3], [0, 0, 0], [0.5, 0.9, 0.4])
    assert instance_average_precision([reranked], [gt], (0.5,))[0.5]["AP"][0] == pytest.approx(2 / 3)


def test_average_precision_is_area_not_11_point():
    assert average_precision([1, 0.5, 2 / 3], [0.5, 0.5, 1]) == pytest.approx(5 / 6)
    assert average_precision([], []) == 0.0
    # a precision dip followed by a rise is filled by the envelope
    assert average_precision([1, 0.5, 0.6], [0.25, 0.25, 0.75]) == pytest.approx(0.25 + 0.5 * 0.6)


def test_difficult_gt_neither_tp_nor_fp():
    # G3 (columns 34-39) is difficult; P4 (score 0.95) and P5 (0.6) both lie on it.
    g3 = rect(SHAPE, (0, 10), (34, 40))
    pred = iset([P1, P2, P3, g3, g3], [0] * 5, [0.9, 0.8, 0.7, 0.95, 0.6])
    gt = iset([G1, G2, g3], [0, 0, 0], difficult=[False, False, True])
    res = instance_average_precision([pred], [gt], (0.5,))[0.5]
    assert res["n_pos"][0] == 2
    assert res["AP"][0] == pytest.approx(5 / 6)  # exactly as if P4, P5 and G3 were absent
    status, index = match_predictions(
        mask_iou(pred.masks, gt.masks), pred.labels, pred.scores, gt.labels, gt.difficult
    )
    assert status.tolist() == [1, 0, 1, -1, -1] and index.tolist() == [0, -1, 1, 2, 2]
    # the same GT not difficult: P4 TP, P1 TP, P2 FP, P3 TP, P5 duplicate FP;
    # precision 1, 1, 2/3, 3/4, 3/5 at recall 1/3, 2/3, 2/3, 1, 1 -> 2/3 + 1/3 * 3/4 = 11/12
    plain = iset([G1, G2, g3], [0, 0, 0])
    assert instance_average_precision([pred], [plain], (0.5,))[0.5]["AP"][0] == pytest.approx(11 / 12)


def test_only_difficult_gt_gives_nan():
    g = rect(SHAPE, (0, 10), (0, 10))
    res = instance_average_precision(
        [iset([g], [0], [1.0])], [iset([g], [0], difficult=[True])], (0.5,)
    )[0.5]
    assert np.isnan(res["AP"][0]) and np.isnan(res["mAP"])


def test_ignore_pixels_move_iou_across_threshold():
    shape = (10, 30)
    g = rect(shape, (0, 10), (0, 10))  # 100 px
    p = rect(shape, (0, 10), (0, 21))  # 210 px: IoU 100/210 = 0.476
    gt = iset([g], [0])
    pred = iset([p], [0], [1.0])
    assert instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"][0] == 0.0
    # ignoring columns 10-20 takes the spill-over out: IoU 1
    gt_ign = iset([g], [0], ignore=rect(shape, (0, 10), (10, 21)))
    assert instance_average_precision([pred], [gt_ign], (0.5,))[0.5]["AP"][0] == 1.0
    # ignoring columns 10-15 only: 100 / 150 = 2/3 -> a hit at 0.5, a miss at 0.7
    gt_part = iset([g], [0], ignore=rect(shape, (0, 10), (10, 16)))
    res = instance_average_precision([pred], [gt_part], (0.5, 0.7))
    assert res[0.5]["AP"][0] == 1.0 and res[0.7]["AP"][0] == 0.0
    np.testing.assert_allclose(mask_iou(pred.masks, gt.masks, gt_part.ignore), [[2 / 3]])
    # an ignore mask on the prediction side counts too (union of both)
    pred_ign = iset([p], [0], [1.0], ignore=rect(shape, (0, 10), (10, 21)))
    assert instance_average_precision([pred_ign], [gt], (0.5,))[0.5]["AP"][0] == 1.0


def test_prediction_inside_ignore_region_is_a_false_positive():
    shape = (10, 30)
    g = rect(shape, (0, 10), (0, 10))
    ignore = rect(shape, (0, 10), (20, 30))
    pred = iset([g, ignore], [0, 0], [0.5, 0.9])  # the ignored-region one ranked first
    res = instance_average_precision([pred], [iset([g], [0], ignore=ignore)], (0.5,))[0.5]
    assert res["AP"][0] == pytest.approx(0.5)  # FP then TP: precision 1/2 at recall 1


def test_class_without_gt_excluded_from_mean():
    shape = (10, 30)
    a, b, c = rect(shape, (0, 5), (0, 5)), rect(shape, (0, 5), (10, 15)), rect(shape, (5, 10), (20, 30))
    # class 0: found; class 1: predicted, no GT; class 2: GT, not found; class 3: nothing
    pred = iset([a, b], [0, 1], [0.9, 0.8])
    gt = iset([a, c], [0, 2])
    res = instance_average_precision([pred], [gt], (0.5,), num_classes=4)[0.5]
    assert res["AP"][0] == 1.0 and np.isnan(res["AP"][1]) and res["AP"][2] == 0.0 and np.isnan(res["AP"][3])
    assert res["mAP"] == pytest.approx(0.5)
    assert res["precision"][1] is None and res["recall"][3] is None
    # without num_classes the class count is one more than the largest label seen
    assert len(instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"]) == 3


def test_predictions_ranked_across_images():
    # image A: TP at 0.6; image B: FP at 0.9, TP at 0.3
    # pooled ranking FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP 2/3
    # (averaging the images' own APs would give (1 + 5/6 ...) something else)
    shape = (10, 20)
    g, far = rect(shape, (0, 10), (0, 10)), rect(shape, (0, 10), (12, 20))
    preds = [iset([g], [0], [0.6]), iset([far, g], [0, 0], [0.9, 0.3])]
    gts = [iset([g], [0]), iset([g], [0])]
    assert instance_average_precision(preds, gts, (0.5,))[0.5]["AP"][0] == pytest.approx(2 / 3)


def test_classes_are_matched_separately():
    g = rect(SHAPE, (0, 10), (0, 10))
    res = instance_average_precision([iset([g], [1], [1.0])], [iset([g], [0])], (0.5,))[0.5]
    assert res["AP"][0] == 0.0 and np.isnan(res["AP"][1]) and res["mAP"] == 0.0


def test_empty_images():
    empty = InstanceSet(np.zeros((0, 4, 4), bool), [], [])
    g = iset([rect((4, 4), (0, 2), (0, 2))], [0])
    assert instance_average_precision([empty], [g], (0.5,))[0.5]["AP"].tolist() == [0.0]
    res = instance_average_precision([empty], [InstanceSet(np.zeros((0, 4, 4), bool), [])], (0.5,))
    assert np.isnan(res[0.5]["mAP"]) and res[0.5]["AP"].size == 0


def test_input_validation():
    with pytest.raises(ValueError, match="scores"):
        APAccumulator((0.5,)).add_masks(iset([G1], [0]), iset([G1], [0]))
    with pytest.raises(ValueError, match="labels"):
        InstanceSet(np.zeros((2, 3, 3), bool), [0])
    with pytest.raises(ValueError, match="num_classes"):
        APAccumulator((0.5,), num_classes=1).add_masks(iset([G1], [1], [1.0]), iset([G1], [0]))
    with pytest.raises(ValueError, match="matching"):
        APAccumulator((0.5,), matching="pascal")
    with pytest.raises(ValueError):
        instance_average_precision([iset([G1], [0], [1.0])], [], (0.5,))


# --------------------------------------------------------------------------- IoU


def test_mask_iou_overlapping_masks_matches_brute_force():
    rng = np.random.default_rng(0)
    pred = rng.random((7, 12, 15)) < 0.3  # heavily overlapping: the matrix-product path
    gt = rng.random((5, 12, 15)) < 0.3
    ignore = rng.random((12, 15)) < 0.2
    np.testing.assert_allclose(mask_iou(pred, gt), brute_iou(pred, gt))
    np.testing.assert_allclose(mask_iou(pred, gt, ignore), brute_iou(pred & ~ignore, gt & ~ignore))
    assert mask_iou(pred[:0], gt).shape == (0, 5)


def test_mask_iou_disjoint_path_and_label_maps_agree():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 9, (20, 25))  # label maps: disjoint masks, the bincount path
    b = rng.integers(0, 6, (20, 25))
    pa, pb = instances_from_label_map(a, np.zeros(9, int)), instances_from_label_map(b, np.zeros(6, int))
    expected = brute_iou(pa.masks, pb.masks)
    np.testing.assert_allclose(mask_iou(pa.masks, pb.masks), expected)
    iou, ida, idb = label_map_iou(a, b)
    assert ida.tolist() == pa.ids.tolist() and idb.tolist() == pb.ids.tolist()
    np.testing.assert_allclose(iou, expected)
    ignore = rng.random((20, 25)) < 0.3
    np.testing.assert_allclose(label_map_iou(a, b, ignore)[0], brute_iou(pa.masks & ~ignore, pb.masks & ~ignore))


def test_mask_iou_many_instances_is_fast():
    # 1024 square cells on 256 x 256, predictions shifted by 2 px: IoU 6*8 / (2*64 - 48) = 0.6
    grid = (np.arange(256)[:, None] // 8) * 32 + np.arange(256)[None, :] // 8 + 1
    shifted = np.roll(grid, 2, axis=1)
    gt = instances_from_label_map(grid, np.zeros(grid.max() + 1, int))
    pred = instances_from_label_map(shifted, np.zeros(grid.max() + 1, int))
    start = time.perf_counter()
    iou = mask_iou(pred.masks, gt.masks)
    fast = time.perf_counter() - start
    assert iou.shape == (1024, 1024)
    assert np.allclose(np.sort(iou, axis=1)[:, -1], 0.6)
    # overlapping masks (every prediction doubled): the matrix-product path
    doubled = np.concatenate([pred.masks[:300], pred.masks[:300]])
    np.testing.assert_allclose(mask_iou(doubled, gt.masks)[300:], iou[:300])
    assert fast < 1.0


def test_mask_iou_matrix_product_path(monkeypatch):
    import napari_irnet.evaluation.overlap as overlap

    rng = np.random.default_rng(2)
    pred = rng.random((40, 16, 16)) < 0.5
    gt = rng.random((30, 16, 16)) < 0.5
    ignore = rng.random((16, 16)) < 0.2
    joined = mask_iou(pred, gt, ignore)
    monkeypatch.setattr(overlap, "_MAX_TRIPLES", 0)  # force the dense fallback
    np.testing.assert_allclose(mask_iou(pred, gt, ignore), joined)
    np.testing.assert_allclose(joined, brute_iou(pred & ~ignore, gt & ~ignore))


def test_box_iou_and_boxes_from_label_map():
    labels = np.zeros((6, 8), int)
    labels[1:3, 2:5] = 4  # rows 1-2, columns 2-4
    labels[5, 7] = 9
    ids, boxes = boxes_from_label_map(labels)
    assert ids.tolist() == [4, 9]
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 5, 8, 6]]  # x1, y1 exclusive
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 7
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [5, 5, 6, 6]]), [[1 / 7, 0]])
    assert boxes_from_label_map(np.zeros((3, 3), int))[1].shape == (0, 4)


def test_box_ap_equals_mask_ap_for_rectangles():
    # the hand case as boxes: the rectangles' box IoU equals their mask IoU
    pred_boxes = [[0, 0, 8, 10], [10, 0, 18, 10], [22, 0, 32, 10]]
    gt_boxes = [[0, 0, 10, 10], [20, 0, 30, 10]]
    res = box_average_precision(
        [pred_boxes], [[0, 0, 0]], [[0.9, 0.8, 0.7]], [gt_boxes], [[0, 0]], iou_thresholds=(0.5, 0.7)
    )
    assert res[0.5]["AP"][0] == pytest.approx(5 / 6) and res[0.7]["AP"][0] == pytest.approx(0.5)
    # a difficult GT box with a prediction on it changes nothing
    res = box_average_precision(
        [pred_boxes + [[34, 0, 40, 10]]], [[0, 0, 0, 0]], [[0.9, 0.8, 0.7, 0.95]],
        [gt_boxes + [[34, 0, 40, 10]]], [[0, 0, 0]], [[False, False, True]],
    )
    assert res[0.5]["AP"][0] == pytest.approx(5 / 6)


def test_instances_from_label_map():
    lm = np.array([[0, 3, 3], [7, 7, 0]])
    s = instances_from_label_map(lm, {3: 1, 7: 0}, scores={3: 0.2, 7: 0.9})
    assert s.ids.tolist() == [3, 7] and s.labels.tolist() == [1, 0] and s.scores.tolist() == [0.2, 0.9]
    assert s.masks[0].tolist() == [[False, True, True], [False, False, False]]
    with pytest.raises(ValueError, match="no class for instance id 7"):
        instances_from_label_map(lm, {3: 1})


# ---------------------------------------------------------------------- semantic


def test_miou_3x3_by_hand():
    gt = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
    pred = np.array([[0, 1, 1], [0, 1, 1], [2, 0, 2]])
    conf = semantic_confusion(pred, gt, 3)
    # rows = GT: class 0 -> (2, 1, 0), class 1 -> (0, 3, 0), class 2 -> (1, 0, 1); (2, 2) ignored
    assert conf.tolist() == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    miou, iou = semantic_miou(conf)
    # IoU0 = 2 / (3 + 3 - 2) = 1/2, IoU1 = 3 / (3 + 4 - 3) = 3/4, IoU2 = 1 / (2 + 1 - 1) = 1/2
    np.testing.assert_allclose(iou, [0.5, 0.75, 0.5])
    assert miou == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    # a class in neither map is NaN and left out of the mean
    miou4, iou4 = semantic_miou(semantic_confusion(pred, gt, 4))
    assert np.isnan(iou4[3]) and miou4 == pytest.approx(miou)


def test_confusion_accumulates_and_maps_predicted_ignore_to_background():
    gt = np.array([[0, 1], [1, 255]])
    pred = np.array([[255, 1], [0, 1]])  # predicted 255 counts as background
    conf = semantic_confusion(pred, gt, 2)
    assert conf.tolist() == [[1, 0], [1, 1]]
    both = semantic_confusion(np.concatenate([pred, pred]), np.concatenate([gt, gt]), 2)
    assert both.tolist() == (2 * conf).tolist()
    with pytest.raises(ValueError, match="outside"):
        semantic_confusion(np.array([[3]]), np.array([[0]]), 2)
    with pytest.raises(ValueError, match="differ"):
        semantic_confusion(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)


# ------------------------------------------------------------- pycocotools cross-checks
#
# Where the protocols agree: candidate matches (same class, IoU >= threshold), greedy in
# score order, one GT per prediction, pooled stable ranking over images, precision and
# recall at every rank, the precision envelope.
# Where they differ:
#   1. integration: VOC (ours) takes the area under the envelope; COCO averages the
#      envelope at the 101 recall points 0, 0.01, ..., 1 (recall 0 included);
#   2. duplicates: chainercv only looks at the best-IoU GT and calls the prediction a
#      duplicate FP if that GT is taken; COCO moves on to the best GT still free. With
#      disjoint GT masks and thresholds > 0.5 the two cannot differ.


def coco_101(precision, recall):
    """COCO-style AP from a PR curve, written independently of our code."""
    env = np.maximum.accumulate(np.asarray(precision, float)[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    values = [env[np.searchsorted(recall, r, side="left")] if r <= recall[-1] else 0.0 for r in points]
    return float(np.mean(values))


def test_coco_and_voc_agree_when_perfect():
    pred, gt = hand_case()
    perfect = iset([G1, G2], [0, 0], [0.9, 0.3])
    assert instance_average_precision([perfect], [gt], (0.5,))[0.5]["AP"][0] == 1.0
    assert coco_mask_ap([perfect], [gt], 0.5)["AP"][0] == pytest.approx(1.0, abs=1e-12)


def test_coco_101_point_differs_from_area_by_expected_amount():
    pred, gt = hand_case()
    ours = instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"][0]
    coco = coco_mask_ap([pred], [gt], 0.5)["AP"][0]
    # recall points 0.5 and 1 lie on COCO's grid: 51 samples at precision 1 (0 .. 0.50),
    # 50 samples at 2/3 (0.51 .. 1.00) -> (51 + 100/3) / 101
    assert coco == pytest.approx((51 + 100 / 3) / 101, abs=1e-12)
    # in general COCO = (100 * area + envelope(0)) / 101: here COCO is higher by (1 - 5/6) / 101
    assert coco - ours == pytest.approx((1 - 5 / 6) / 101, abs=1e-12)
    assert coco > ours
    # off the grid (3 GT, ranks TP FP TP TP: recall 1/3 falls between 0.33 and 0.34):
    # area = 1/3 + 2/3 * 3/4 = 5/6; COCO = (34 * 1 + 67 * 3/4) / 101
    shape = (10, 40)
    g = [rect(shape, (0, 10), (c, c + 10)) for c in (0, 13, 26)]
    bad = rect(shape, (0, 10), (11, 13))
    p = iset([g[0], bad, g[1], g[2]], [0] * 4, [0.9, 0.8, 0.7, 0.6])
    truth = iset(g, [0, 0, 0])
    ours = instance_average_precision([p], [truth], (0.5,))[0.5]["AP"][0]
    coco = coco_mask_ap([p], [truth], 0.5)["AP"][0]
    assert ours == pytest.approx(5 / 6)
    assert coco == pytest.approx((34 + 67 * 0.75) / 101, abs=1e-12)


def test_duplicate_rule_differs_from_coco():
    # GT A = columns 0-9, B = columns 10-19 (4 x 20); Q1 = A exactly (score 0.9);
    # Q2 = columns 3-14 (score 0.8): IoU with A = 7/15, with B = 5/17, both >= 0.25.
    # chainercv: Q2's best GT is A, already taken -> duplicate FP -> AP 1/2.
    # COCO: Q2 takes the best free GT, B -> TP -> AP 1.
    shape = (4, 20)
    a, b = rect(shape, (0, 4), (0, 10)), rect(shape, (0, 4), (10, 20))
    q2 = rect(shape, (0, 4), (3, 15))
    pred, gt = iset([a, q2], [0, 0], [0.9, 0.8]), iset([a, b], [0, 0])
    np.testing.assert_allclose(mask_iou(pred.masks, gt.masks)[1], [7 / 15, 5 / 17])
    voc = instance_average_precision([pred], [gt], (0.25,))[0.25]["AP"][0]
    ours_coco = instance_average_precision([pred], [gt], (0.25,), matching="coco")[0.25]["AP"][0]
    ref = coco_mask_ap([pred], [gt], 0.25)
    assert voc == pytest.approx(0.5)
    assert ours_coco == 1.0 and ref["AP"][0] == pytest.approx(1.0, abs=1e-12)
    e = [x for x in ref["cocoeval"].evalImgs if x is not None][0]
    assert e["dtMatches"][0].tolist() == [1, 2]  # Q1 -> GT id 1 (A), Q2 -> GT id 2 (B)
    # at 0.5 only Q1 matches under both rules
    assert instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"][0] == pytest.approx(0.5)
    assert coco_mask_ap([pred], [gt], 0.5)["AP"][0] == pytest.approx((51 + 0) / 101, abs=1e-12)


def _synthetic_predictions():
    """GT from the synthetic generator and imperfect predictions of it (label maps)."""
    from napari_irnet.synthetic import CLASS_NAMES, make_dataset

    rng = np.random.default_rng(7)
    preds, gts = [], []
    for s in make_dataset(4, shape=(96, 96), seed=3, density=2.0):
        cls = {k: CLASS_NAMES.index(v) for k, v in s.instance_classes.items()}
        gts.append(instances_from_label_map(s.instances, cls))
        p = np.roll(s.instances.astype(np.int64), rng.integers(-1, 2, size=2), axis=(0, 1))
        ids = [int(i) for i in np.unique(p) if i]
        if len(ids) > 2:
            p[p == ids[0]] = 0  # a missed instance
            p[p == ids[1]] = ids[2]  # two merged
        p[88:94, 2:8] = 99  # a spurious one
        cls[99] = 0
        present = [int(i) for i in np.unique(p) if i]
        flip = {i: (cls[i] + 1) % 3 if rng.random() < 0.15 else cls[i] for i in present}
        scores = {i: float(v) for i, v in zip(present, rng.permutation(len(present)) / len(present) + 0.01)}
        preds.append(instances_from_label_map(p, flip, scores=scores))
    return preds, gts


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75])
def test_per_image_matches_equal_cocoeval(threshold):
    preds, gts = _synthetic_predictions()
    ref = coco_mask_ap(preds, gts, threshold, num_classes=3)
    gt_id = {pair: i + 1 for i, pair in enumerate(ref["gt_index"])}
    coco_match = {}
    for e in ref["cocoeval"].evalImgs:
        if e is not None:
            for dt, m in zip(e["dtIds"], e["dtMatches"][0]):
                coco_match[dt] = int(m)
    n_tp = 0
    # chainercv's rule is compared only above 0.5, where it cannot differ (disjoint masks)
    for rule in ("coco", "voc") if threshold > 0.5 else ("coco",):
        for img, (pred, gt) in enumerate(zip(preds, gts)):
            iou = mask_iou(pred.masks, gt.masks)
            status, index = match_predictions(iou, pred.labels, pred.scores, gt.labels, None, threshold, rule)
            for j in range(len(pred)):
                dt = ref["pred_index"].index((img, j)) + 1
                expected = gt_id[(img, int(index[j]))] if status[j] == 1 else 0
                assert coco_match[dt] == expected, (rule, img, j)
                n_tp += status[j] == 1
    assert n_tp > 10  # the comparison is not vacuous


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75])
def test_coco_ap_is_our_envelope_sampled_at_101_points(threshold):
    preds, gts = _synthetic_predictions()
    ours = instance_average_precision(preds, gts, (threshold,), num_classes=3, matching="coco")[threshold]
    ref = coco_mask_ap(preds, gts, threshold, num_classes=3)
    checked = 0
    for c in range(3):
        if np.isnan(ours["AP"][c]):
            assert np.isnan(ref["AP"][c])
            continue
        sampled = coco_101(ours["precision"][c], ours["recall"][c]) if ours["recall"][c].size else 0.0
        # COCO divides by tp + fp + 2.2e-16, hence the tolerance
        assert ref["AP"][c] == pytest.approx(sampled, abs=1e-9)
        # the two integration rules are close but not the same number
        assert abs(ref["AP"][c] - ours["AP"][c]) < 0.02
        checked += 1
    assert checked == 3
    if threshold >= 0.5:  # disjoint masks above 0.5: chainercv's rule gives the same AP
        voc = instance_average_precision(preds, gts, (threshold,), num_classes=3)[threshold]
        np.testing.assert_allclose(voc["AP"], ours["AP"])


# ------------------------------------------------- more hand cases and cross-checks


def test_hand_case_11_point_rule_differs():
    # The docstring number above: VOC2007's 11-point rule on the hand case gives
    # (6 * 1 + 5 * 2/3) / 11, which we do NOT report; the area rule gives 5/6.
    pred, gt = hand_case()
    res = instance_average_precision([pred], [gt], (0.5,))[0.5]
    env = np.maximum.accumulate(res["precision"][0][::-1])[::-1]
    eleven = np.mean([env[res["recall"][0] >= t].max() if (res["recall"][0] >= t).any() else 0 for t in np.linspace(0, 1, 11)])
    assert eleven == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert res["AP"][0] == pytest.approx(5 / 6) and abs(res["AP"][0] - eleven) > 0.01


def test_two_classes_two_images_by_hand():
    # class 0: image 1 TP (0.9), image 2 FP (0.8) and a missed GT -> ranks TP, FP, 2 GT:
    #   precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2
    # class 1: image 2 TP (0.3) on its only GT -> AP 1; mAP = 3/4.
    shape = (10, 30)
    a, b, c = rect(shape, (0, 10), (0, 10)), rect(shape, (0, 10), (10, 20)), rect(shape, (0, 10), (20, 30))
    preds = [iset([a], [0], [0.9]), iset([c, b], [0, 1], [0.8, 0.3])]
    gts = [iset([a], [0]), iset([a, b], [0, 1])]
    res = instance_average_precision(preds, gts, (0.5,))[0.5]
    np.testing.assert_allclose(res["AP"], [0.5, 1.0])
    assert res["mAP"] == pytest.approx(0.75)
    assert res["n_pos"].tolist() == [2, 1] and res["n_pred"].tolist() == [2, 1]


def _chainercv_like(preds, gts, threshold):
    """A plain loop over chainercv's eval_instance_segmentation_voc rules (independent of metrics.py).

    Per image and class: predictions in score order, each takes its best-IoU GT of
    the class; below the threshold -> FP; difficult -> ignored; already taken -> FP.
    Then per class over all images a stable score sort, cumulative TP/FP and the
    area under the precision envelope.
    """
    records, n_pos = {}, {}
    for pred, gt in zip(preds, gts):
        difficult = gt.difficult if gt.difficult is not None else np.zeros(len(gt), bool)
        for c in set(pred.labels.tolist()) | set(gt.labels.tolist()):
            g_idx = [j for j in range(len(gt)) if gt.labels[j] == c]
            n_pos[c] = n_pos.get(c, 0) + sum(not difficult[j] for j in g_idx)
            p_idx = sorted([i for i in range(len(pred)) if pred.labels[i] == c], key=lambda i: -pred.scores[i])
            taken = set()
            for i in p_idx:
                if not g_idx:
                    records.setdefault(c, []).append((pred.scores[i], 0))
                    continue
                ious = [brute_iou(pred.masks[i : i + 1], gt.masks[j : j + 1])[0, 0] for j in g_idx]
                best = int(np.argmax(ious))
                j = g_idx[best]
                if ious[best] < threshold:
                    flag = 0
                elif difficult[j]:
                    flag = -1
                else:
                    flag = 0 if j in taken else 1
                if ious[best] >= threshold:
                    taken.add(j)
                records.setdefault(c, []).append((pred.scores[i], flag))
    ap = {}
    for c, npos in n_pos.items():
        if npos == 0:
            continue
        recs = sorted(records.get(c, []), key=lambda r: -r[0])
        flags = np.array([f for _, f in recs if f >= 0], int)
        tp, fp = np.cumsum(flags == 1), np.cumsum(flags == 0)
        prec = tp / np.maximum(tp + fp, 1)
        rec = tp / npos
        mrec = np.concatenate([[0], rec, [1]])
        mpre = np.concatenate([[0], prec, [0]])
        for k in range(mpre.size - 1, 0, -1):
            mpre[k - 1] = max(mpre[k - 1], mpre[k])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        ap[c] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    return ap


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.7])
def test_random_overlapping_masks_match_a_plain_loop(threshold):
    # overlapping predictions and GT, duplicates, difficult GT, distinct scores
    rng = np.random.default_rng(11)
    preds, gts = [], []
    for _ in range(5):
        shape = (24, 24)

        def blobs(n):
            out = []
            for _ in range(n):
                y, x = rng.integers(0, 18, 2)
                h, w = rng.integers(3, 8, 2)
                out.append(rect(shape, (y, y + h), (x, x + w)))
            return out

        g = blobs(4)
        p = [np.roll(m, rng.integers(-1, 2, 2), axis=(0, 1)) for m in g] + blobs(3)
        gts.append(iset(g, rng.integers(0, 2, 4), difficult=rng.random(4) < 0.2))
        preds.append(iset(p, rng.integers(0, 2, 7), rng.random(7)))
    ours = instance_average_precision(preds, gts, (threshold,), num_classes=2)[threshold]["AP"]
    ref = _chainercv_like(preds, gts, threshold)
    for c in range(2):
        if c in ref:
            assert ours[c] == pytest.approx(ref[c], abs=1e-12)
        else:
            assert np.isnan(ours[c])


def test_difficult_gt_versus_coco_crowd():
    # Where they agree: a prediction lying exactly on a difficult (COCO: crowd) GT is
    # ignored by both and the AP is that of the other predictions.
    pred, gt = hand_case()
    g3 = rect(SHAPE, (0, 10), (34, 40))
    with_crowd = iset([G1, G2, g3], [0, 0, 0], difficult=[False, False, True])
    on_crowd = iset([*pred.masks, g3], [0] * 4, [0.9, 0.8, 0.7, 0.95])
    assert instance_average_precision([on_crowd], [with_crowd], (0.5,))[0.5]["AP"][0] == pytest.approx(5 / 6)
    assert coco_mask_ap([on_crowd], [with_crowd], 0.5)["AP"][0] == pytest.approx((51 + 100 / 3) / 101, abs=1e-12)
    # Where they differ: a small prediction inside a big difficult region. Its IoU with
    # the region is 12 / 60 = 0.2 -> a FP under VOC; COCO measures a crowd overlap as
    # intersection / prediction area = 1 -> ignored.
    shape = (10, 40)
    big = rect(shape, (0, 10), (34, 40))  # 60 px
    small = rect(shape, (0, 2), (34, 40))  # 12 px
    gt = iset([G1, G2, big], [0, 0, 0], difficult=[False, False, True])
    pred = iset([G1, small, G2], [0, 0, 0], [0.9, 0.8, 0.7])
    voc = instance_average_precision([pred], [gt], (0.5,))[0.5]["AP"][0]
    coco = coco_mask_ap([pred], [gt], 0.5)["AP"][0]
    assert voc == pytest.approx(0.5 + 0.5 * 2 / 3)  # TP, FP, TP
    assert coco == pytest.approx(1.0, abs=1e-12)  # TP, ignored, TP


def test_box_ap_per_image_matches_equal_cocoeval_bbox():
    # pycocotools' bbox evaluation on [x, y, w, h] boxes: the same IoU as ours for
    # [x0, y0, x1, y1] with exclusive ends, the same greedy matching above 0.5, so
    # the same TP/FP per detection; AP differs only by COCO's 101-point sampling.
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(5)
    n_img = 6
    gt_boxes, gt_labels, pred_boxes, pred_labels, pred_scores = [], [], [], [], []
    images, gt_anns, dt_anns = [], [], []
    for i in range(n_img):
        g = np.concatenate([rng.integers(0, 60, (5, 2)), np.zeros((5, 2))], 1)
        g[:, 2:] = g[:, :2] + rng.integers(4, 20, (5, 2))
        gl = rng.integers(0, 2, 5)
        p = np.concatenate([g + rng.integers(-3, 4, (5, 4)), g[:2] + 8])
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        pl = np.concatenate([gl, rng.integers(0, 2, 2)])
        ps = rng.random(7)
        gt_boxes.append(g), gt_labels.append(gl), pred_boxes.append(p), pred_labels.append(pl), pred_scores.append(ps)
        images.append({"id": i + 1, "height": 100, "width": 100})
        for b, c in zip(g, gl):
            w, h = b[2] - b[0], b[3] - b[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                            "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        for b, c, s in zip(p, pl, ps):
            dt_anns.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1}, {"id": 2}]}
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dt_anns), iouType="bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [100]
        ev.evaluate()
        ev.accumulate()
    coco_match = {}
    for e in ev.evalImgs:
        if e is not None:
            for dt, m in zip(e["dtIds"], e["dtMatches"][0]):
                coco_match[dt] = int(m)
    dt_id, n_tp = 1, 0
    for i in range(n_img):
        status, index = match_predictions(
            box_iou(pred_boxes[i], gt_boxes[i]), pred_labels[i], pred_scores[i], gt_labels[i], None, 0.5
        )
        for j in range(7):
            expected = 5 * i + int(index[j]) + 1 if status[j] == 1 else 0  # GT ids run 1.. image by image
            assert coco_match[dt_id] == expected
            n_tp += status[j] == 1
            dt_id += 1
    assert n_tp > 10
    ours = box_average_precision(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, iou_thresholds=(0.5,), matching="coco")[0.5]
    for c in range(2):
        sampled = coco_101(ours["precision"][c], ours["recall"][c])
        assert ev.eval["precision"][0, :, c, 0, 0].mean() == pytest.approx(sampled, abs=1e-9)
