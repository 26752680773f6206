"""Post-processing stages on constructed inputs whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.pipeline.stages import (
    IGNORE,
    assign_instances,
    cam_class_map,
    centroid_points,
    cluster_centroids,
    find_centroids,
    instance_cams,
    seeds_from_cams,
    semantic_from_walk,
)

CENTRES = np.array([[5.0, 6.0], [22.0, 8.0], [14.0, 25.0]])


def _field_to_centres(shape=(30, 32)):
    """Each pixel points at its nearest of three centres (Voronoi partition)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dist = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in CENTRES])
    owner = dist.argmin(0)
    disp = np.stack([CENTRES[owner, 0] - yy, CENTRES[owner, 1] - xx]).astype(np.float32)
    return disp, owner


def test_centroids_reach_their_centres():
    disp, owner = _field_to_centres()
    cen = find_centroids(disp, steps=20)
    for k, (cy, cx) in enumerate(CENTRES):
        ys, xs = cen[0][owner == k], cen[1][owner == k]
        assert np.all(ys == cy) and np.all(xs == cx)


def test_three_centres_give_three_clusters():
    disp, owner = _field_to_centres()
    clusters = cluster_centroids(find_centroids(disp, 300), disp, 2.5)
    assert clusters.max() + 1 == 3
    for k in range(3):
        assert len(np.unique(clusters[owner == k])) == 1
    assert len({int(np.unique(clusters[owner == k])[0]) for k in range(3)}) == 3
    pts = centroid_points(find_centroids(disp, 300), clusters)
    found = sorted(map(tuple, np.round(pts).astype(int)))
    assert found == sorted(map(tuple, CENTRES.astype(int)))


def test_pixels_landing_off_centre_share_one_extra_cluster():
    disp, owner = _field_to_centres()
    # a region whose field points at nothing weak: a constant strong push to the border
    disp[:, :4, 28:] = np.array([-10.0, 10.0])[:, None, None]
    clusters = cluster_centroids(find_centroids(disp, 300), disp, 2.5)
    assert clusters.max() + 1 == 4
    assert len(np.unique(clusters[:4, 28:])) == 1


def test_seeds_thresholds_and_ignore():
    cams = np.zeros((2, 4, 6), np.float32)
    cams[0, :, :2] = 0.9  # confident class-a
    cams[1, :, 2:4] = 0.2  # between the thresholds: ignore
    cams[1, 0, 4] = 0.5  # confident class-b
    seeds = seeds_from_cams(cams, class_ids=[3, 7], fg_threshold=0.3, bg_threshold=0.05, use_crf=False)
    assert (seeds[:, :2] == 4).all()
    assert (seeds[:, 2:4] == IGNORE).all()
    assert seeds[0, 4] == 8
    assert (seeds[1:, 4:] == 0).all()


def test_seeds_ties_go_to_the_threshold_then_to_the_first_class():
    cams = np.zeros((2, 1, 4), np.float32)
    cams[0, 0, 0] = 0.3  # exactly the foreground threshold: not foreground (the reference's argmax over [threshold, maps])
    cams[:, 0, 1] = 0.6  # two classes equal: the first one
    cams[0, 0, 2], cams[1, 0, 2] = 0.4, 0.7
    cams[:, 0, 3] = 0.05  # exactly the background threshold: background
    seeds = seeds_from_cams(cams, class_ids=[3, 7], fg_threshold=0.3, bg_threshold=0.05, use_crf=False)
    assert seeds.tolist() == [[IGNORE, 4, 8, 0]]


def test_seed_thresholds_per_class():
    cams = np.zeros((3, 1, 5), np.float32)
    cams[0, 0, 0] = 0.35  # class 3 over the single threshold 0.3, under its own 0.4
    cams[0, 0, 1] = 0.45  # over both
    cams[1, 0, 2] = 0.999  # class 7 never seeds (1.0): not foreground, not background either
    cams[2, 0, 3] = 0.31  # class 9 keeps 0.3
    cams[:, 0, 4] = 0.01
    one = seeds_from_cams(cams, class_ids=[3, 7, 9], fg_threshold=0.3, bg_threshold=0.05, use_crf=False)
    assert one.tolist() == [[4, 4, 8, 10, 0]]
    per_class = seeds_from_cams(cams, class_ids=[3, 7, 9], fg_threshold=[0.4, 1.0, 0.3], bg_threshold=0.05, use_crf=False)
    assert per_class.tolist() == [[IGNORE, 4, IGNORE, 10, 0]]
    # equal entries give exactly the single threshold's seeds, ties included
    rng = np.random.default_rng(1)
    maps = rng.random((3, 32, 32)).astype(np.float32)
    maps[1, :4, :4] = np.float32(0.3)
    np.testing.assert_array_equal(
        seeds_from_cams(maps, [0, 1, 2], [0.3] * 3, 0.05, use_crf=False), seeds_from_cams(maps, [0, 1, 2], 0.3, 0.05, use_crf=False)
    )
    with pytest.raises(ValueError, match="2 foreground thresholds for 3 CAMs"):
        seeds_from_cams(maps, [0, 1, 2], [0.3, 0.4], 0.05, use_crf=False)


def test_instance_cams_split_by_cluster():
    cams = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    clusters = np.array([[0, 1], [1, 0]])
    out = instance_cams(cams, clusters)
    assert out.shape == (4, 2, 2)
    assert torch.equal(out[0], torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    assert torch.equal(out[3], torch.tensor([[0.0, 6.0], [7.0, 0.0]]))


def test_assign_instances_components_scores_and_fragments():
    walk = torch.zeros(2, 8, 8)
    walk[0, 1:3, 1:3] = 1.0  # plane 0: one block
    walk[1, 5:7, 1:3] = 0.6  # plane 1: two separate blocks
    walk[1, 5:7, 5:7] = 0.5
    res = assign_instances(walk, plane_classes=[2, 4], image_shape=(32, 32), bg_threshold=0.25, min_fragment_fraction=0.0)
    assert res.labels.shape == (32, 32) and res.labels.max() == 3 == len(res.records)
    by_class = sorted((r["class_id"], round(r["score"], 3)) for r in res.records)
    assert by_class[0] == (2, 1.0)
    assert [c for c, _ in by_class] == [2, 4, 4]
    assert 0.4 < by_class[1][1] <= 0.6 and 0.4 < by_class[2][1] <= 0.6
    for r in res.records:
        x0, y0, x1, y1 = r["bbox"]
        mask = res.labels == r["id"]
        assert mask.sum() == r["area"]
        ys, xs = np.nonzero(mask)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
    # the same with a large minimum fragment: everything scored 0 but kept
    res = assign_instances(walk, [2, 4], (32, 32), 0.25, min_fragment_fraction=0.5)
    assert len(res.records) == 3 and all(r["score"] == 0.0 for r in res.records)


def test_semantic_from_walk_background_threshold():
    walk = torch.zeros(2, 4, 4)
    walk[0, :2] = 1.0
    walk[1, 2:, :2] = 0.5
    walk[1, 2:, 2:] = 0.1
    sem = semantic_from_walk(walk, class_ids=[0, 5], image_shape=(16, 16), bg_threshold=0.25)
    assert sem[0, 0] == 1 and sem[15, 0] == 6 and sem[15, 15] == 0


def test_cam_class_map():
    cams = np.zeros((2, 3, 3), np.float32)
    cams[0, 0] = 0.5
    cams[1, 2] = 0.1
    out = cam_class_map(cams, [1, 2], threshold=0.15)
    assert (out[0] == 2).all() and (out[1] == 0).all() and (out[2] == 0).all()


def test_centroids_in_chunks_equal_the_whole_grid_at_once():
    # pixels move independently: any chunking gives the same final positions
    rng = np.random.default_rng(5)
    field = rng.normal(0, 1.5, (2, 13, 17)).astype(np.float32)
    whole = find_centroids(field, 40, chunk=10**9)
    np.testing.assert_array_equal(find_centroids(field, 40, chunk=7), whole)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # chunks side by side in threads
    try:
        np.testing.assert_array_equal(find_centroids(field, 40, chunk=7), whole)
    finally:
        torch.set_num_threads(before)
    assert whole.shape == (2, 13, 17) and whole.dtype == np.int32
    assert 0 <= whole[0].min() and whole[0].max() <= 12 and whole[1].max() <= 16


def test_seeds_of_a_large_image_are_decided_in_bands_with_the_same_result():
    # 3 maps of 1500 x 1000 exceed one band (4 Mi values): the rows are split, the rule is not
    rng = np.random.default_rng(3)
    cams = rng.random((3, 1500, 1000), dtype=np.float32) ** 3
    seeds = seeds_from_cams(cams, [0, 2, 4], 0.30, 0.05, use_crf=False)
    keys = np.array([0, 1, 3, 5])
    fg = keys[np.argmax(np.concatenate([np.full((1, 1500, 1000), 0.30, np.float32), cams]), axis=0)]
    bg = keys[np.argmax(np.concatenate([np.full((1, 1500, 1000), 0.05, np.float32), cams]), axis=0)]
    expected = np.where(fg > 0, fg, np.where(bg == 0, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(seeds, expected)
    assert set(np.unique(seeds)) == {0, 1, 3, 5, 255}


def test_seeds_without_pydensecrf_follow_the_image_edges(monkeypatch):
    """Without pydensecrf, use_crf refines the seeds by a vote in image segments: a CAM blob twice a
    cell's size becomes seeds on the cell (the unrefined seeds cover its surroundings too)."""
    import napari_irnet.pipeline.stages as pp

    monkeypatch.setattr(pp, "_dense_crf", lambda image, labels, n: None)  # as without the package
    yy, xx = np.mgrid[0:128, 0:128]
    cell = (yy - 64) ** 2 + (xx - 60) ** 2 <= 15**2
    image = np.where(cell[..., None], [200, 60, 160], [240, 225, 220]).astype(np.uint8)
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    blob = np.exp(-((yy - 64) ** 2 + (xx - 60) ** 2) / (2 * 18.0**2)).astype(np.float32)[None]
    plain = pp.seeds_from_cams(blob, [2], 0.3, 0.05, image, use_crf=False)
    refined = pp.seeds_from_cams(blob, [2], 0.3, 0.05, image, use_crf=True)

    def precision(seeds):
        fg = seeds == 3
        return (fg & cell).sum() / fg.sum(), (fg & cell).sum() / cell.sum()

    plain_precision, _ = precision(plain)
    refined_precision, refined_cover = precision(refined)
    assert plain_precision < 0.6
    assert refined_precision > 0.8 and refined_cover > 0.95  # the segments' edges blur by a pixel or two
    assert (refined[np.hypot(yy - 64, xx - 60) > 18] != 3).all() and set(np.unique(refined)) <= {0, 3, pp.IGNORE}


def test_segment_vote_takes_the_majority_label_of_each_segment():
    from napari_irnet.pipeline.stages import segment_vote

    segments = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    labels = np.array([[2, 2, 0, 1], [2, 0, 1, 1]])
    assert segment_vote(segments, labels, 3).tolist() == [[2, 2, 1, 1], [2, 2, 1, 1]]


def test_crf_takes_a_read_only_image():
    """Images decoded by PIL (np.asarray) are read-only; pydensecrf refuses read-only buffers."""
    pytest = __import__("pytest")
    pytest.importorskip("pydensecrf.densecrf")
    from napari_irnet.pipeline.stages import _dense_crf

    image = np.full((32, 32, 3), 200, np.uint8)
    image[8:24, 8:24] = (90, 30, 120)
    image.setflags(write=False)
    labels = np.zeros((32, 32), np.int64)
    labels[6:26, 6:26] = 1
    refined = _dense_crf(image, labels, 2)
    assert refined is not None and refined[16, 16] == 1 and refined[1, 1] == 0


def test_large_images_are_segmented_square_by_square(monkeypatch):
    import napari_irnet.pipeline.stages as pp

    rng = np.random.default_rng(1)
    image = np.where(rng.random((70, 90, 1)) < 0.5, [250, 250, 250], [20, 120, 200]).astype(np.uint8)
    image[:, :, :] = np.repeat(np.repeat(image[::10, ::10], 10, 0), 10, 1)[:70, :90]  # blocks of 10 px
    whole = pp.image_segments(image)
    monkeypatch.setattr(pp, "SEGMENT_TILE", 32)
    tiled = pp.image_segments(image)
    assert tiled.shape == (70, 90) and tiled.dtype == np.int32
    squares = [tiled[y : y + 32, x : x + 32] for y in range(0, 70, 32) for x in range(0, 90, 32)]
    ids = [set(np.unique(s).tolist()) for s in squares]
    assert all(a.isdisjoint(b) for i, a in enumerate(ids) for b in ids[i + 1 :])  # no segment crosses a square's edge
    assert sum(len(i) for i in ids) == len(np.unique(tiled)) == int(tiled.max()) + 1  # ids unique and dense
    # the first square is segmented as that part of the image alone is
    first = pp.image_segments(np.ascontiguousarray(image[:32, :32]))
    np.testing.assert_array_equal(tiled[:32, :32], first)
    assert whole.shape == (70, 90) and len(np.unique(whole)) < len(np.unique(tiled))  # squares cut segments the whole image keeps
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # squares side by side in threads: the same ids
    try:
        np.testing.assert_array_equal(pp.image_segments(image), tiled)
    finally:
        torch.set_num_threads(before)


def test_label_maximum_equals_scipy_per_label_maximum():
    from scipy import ndimage

    from napari_irnet.pipeline.stages import label_maximum

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, (64, 80)).astype(np.int32)
    labels[labels == 17] = 0  # a label that does not occur
    scores = rng.normal(size=labels.shape).astype(np.float32)  # negative maxima too
    keys = rng.integers(1, 9, labels.shape).astype(np.int32)
    ids = np.arange(1, 40)
    present = np.isin(ids, labels)
    got = label_maximum(scores, labels, 39)
    np.testing.assert_array_equal(got[present], np.asarray(ndimage.maximum(scores, labels, ids))[present])
    np.testing.assert_array_equal(label_maximum(keys, labels, 39)[present], np.asarray(ndimage.maximum(keys, labels, ids))[present])
    assert got[16] == np.finfo(np.float32).min and label_maximum(scores, labels, 0).shape == (0,)
