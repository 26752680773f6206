"""The stage cache re-runs exactly the stages whose inputs changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_irnet.params import Params
from napari_irnet.pipeline import walkers
from napari_irnet.pipeline.cache import StageCache, clusters_from_points
from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs
from napari_irnet.pipeline.predict import postprocess

FAST = Params(cam_scales=(1.0,), walk_steps=32, centroid_steps=40, use_crf=False, min_fragment_fraction=0.0)
CENTRES = np.array([[8.0, 8.0], [8.0, 24.0]])  # grid units on a 16 x 32 grid


def _two_blobs() -> NetworkOutputs:
    """Two discs of one class, a boundary wall between them, displacement to their centres."""
    h, w = 16, 32
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in CENTRES])
    nearest = dist.argmin(0)
    cam = np.exp(-(dist.min(0) / 5.0) ** 2).astype(np.float32)[None]
    disp = np.stack([CENTRES[nearest, 0] - yy, CENTRES[nearest, 1] - xx]).astype(np.float32)
    boundary = np.zeros((h, w), np.float32)
    boundary[:, 15:17] = 1.0
    strided = torch.from_numpy(cam)
    high = F.interpolate(strided[None], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)[0]
    return NetworkOutputs((4 * h, 4 * w), CAMOutput(np.array([1]), strided, high), IRNetOutput(torch.from_numpy(boundary), torch.from_numpy(disp)))


def test_first_update_runs_every_stage_and_matches_postprocess():
    outputs = _two_blobs()
    cache = StageCache(outputs, FAST)
    pred = cache.update()
    assert set(cache.last_recomputed) == {"seeds", "centroids", "clusters", "weights", "iwalk", "instances", "swalk", "semantic"}
    ref = postprocess(outputs, FAST)
    np.testing.assert_array_equal(pred.instances.labels, ref.instances.labels)
    np.testing.assert_array_equal(pred.semantic, ref.semantic)
    # the two discs are two instances of class 1, split at the wall
    assert len(pred.instances.records) == 2
    assert {r["class_id"] for r in pred.instances.records} == {1}
    left, right = pred.instances.labels[32, 32], pred.instances.labels[32, 96]
    assert left and right and left != right


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"instance_bg_threshold": 0.5}, {"instances"}),
        ({"min_fragment_fraction": 0.2}, {"instances"}),
        ({"semantic_bg_threshold": 0.5}, {"semantic"}),
        ({"seed_fg_threshold": 0.5}, {"seeds"}),
        ({"seed_class_thresholds": {"b": 0.9}}, {"seeds"}),
        ({"cluster_threshold": 1.0}, {"clusters", "iwalk", "instances"}),
        ({"beta": 5.0}, {"weights", "iwalk", "instances", "swalk", "semantic"}),
        ({"radius": 4}, {"weights", "iwalk", "instances", "swalk", "semantic"}),
        ({"walk_tolerance": 0.05}, {"iwalk", "instances"}),
        ({"instance_walk": "global"}, {"iwalk", "instances"}),
        ({"walk_steps": 8}, {"iwalk", "instances", "swalk", "semantic"}),
        ({"centroid_steps": 10}, {"centroids", "clusters", "iwalk", "instances"}),
    ],
)
def test_a_parameter_change_reruns_only_its_stages(change, expected):
    cache = StageCache(_two_blobs(), FAST)
    cache.update()
    cache.update(FAST.replace(**change))
    assert set(cache.last_recomputed) == expected
    cache.update()
    assert cache.last_recomputed == []


def test_seed_thresholds_per_class_follow_the_class_names_of_the_outputs():
    import dataclasses

    named = dataclasses.replace(_two_blobs(), class_names=("a", "b"))  # the map is class 1: "b"
    cache = StageCache(named, FAST)
    assert (cache.update().seeds == 2).any()
    assert not (cache.update(FAST.replace(seed_class_thresholds={"b": 1.0})).seeds == 2).any()
    assert (cache.update(FAST.replace(seed_class_thresholds={"a": 1.0})).seeds == 2).any()
    # outputs that do not name their classes keep the single threshold
    anonymous = StageCache(_two_blobs(), FAST.replace(seed_class_thresholds={"b": 1.0}))
    np.testing.assert_array_equal(anonymous.update().seeds, StageCache(_two_blobs(), FAST).update().seeds)


def test_cached_threshold_change_equals_a_fresh_run():
    outputs = _two_blobs()
    cache = StageCache(outputs, FAST)
    cache.update()
    changed = FAST.replace(instance_bg_threshold=0.6, semantic_bg_threshold=0.6)
    cached = cache.update(changed)
    fresh = postprocess(outputs, changed)
    np.testing.assert_array_equal(cached.instances.labels, fresh.instances.labels)
    assert cached.instances.records == fresh.instances.records
    np.testing.assert_array_equal(cached.semantic, fresh.semantic)
    # and the threshold did something: fewer foreground pixels
    first = postprocess(outputs, FAST)
    assert (cached.instances.labels > 0).sum() < (first.instances.labels > 0).sum()


def test_edited_centre_points_drive_the_clusters():
    cache = StageCache(_two_blobs(), FAST.replace(walk_steps=0))
    two = cache.update()
    assert len(two.instances.records) == 2
    # delete the right centre: one cluster left, both discs become one class-1 region per disc
    one = cache.update(centre_points=CENTRES[:1] * 4)
    assert "clusters" in cache.last_recomputed and "seeds" not in cache.last_recomputed
    np.testing.assert_allclose(one.centre_points, CENTRES[:1] * 4)
    assert one.clusters.max() == 0
    # moving a centre moves the partition
    moved = cache.update(centre_points=np.array([[8.0, 8.0], [8.0, 12.0]]) * 4)
    assert set(np.unique(moved.clusters)) == {0, 1}
    cache.reset_points()
    back = cache.update()
    np.testing.assert_array_equal(back.clusters, two.clusters)


def test_clusters_from_points_is_nearest_point_of_the_converged_centroid():
    centroids = np.array([[[0, 0, 9]], [[0, 5, 9]]])  # (2, 1, 3): three pixels
    points = np.array([[0.0, 0.0], [9.0, 9.0]])
    np.testing.assert_array_equal(clusters_from_points(centroids, points), [[0, 0, 1]])
    with pytest.raises(ValueError, match="at least one"):
        clusters_from_points(centroids, np.zeros((0, 2)))


def test_should_stop_interrupts_and_keeps_finished_stages():
    cache = StageCache(_two_blobs(), FAST)
    with pytest.raises(InterruptedError):
        cache.update(should_stop=lambda: True)
    assert cache.last_recomputed == ["seeds"]
    cache.update()
    assert "seeds" not in cache.last_recomputed and "iwalk" in cache.last_recomputed


def test_a_walk_reports_its_steps_and_stops_at_one(monkeypatch):
    from napari_irnet.progress import Step
    # one walk step per call of the stencil loop, as on grids of a megapixel (tiny grids run all their steps in one)
    monkeypatch.setattr(walkers, "STENCIL_CALL_VALUES", 1)

    cache = StageCache(_two_blobs(), FAST)
    steps: list[Step] = []
    cache.update(progress=steps.append)
    stages = [s.stage for s in steps]
    assert stages[:2] == ["seeds", "clusters"] and "instances" in stages
    walk = [s for s in steps if s.stage == "instance walk"]
    assert walk and walk[-1].done == walk[-1].total >= FAST.walk_steps
    assert [s.done for s in steps if s.stage == "semantic walk"][-1] == FAST.walk_steps

    seen: list[Step] = []
    fresh = StageCache(_two_blobs(), FAST)
    stop = lambda: len([s for s in seen if s.stage == "instance walk"]) >= 5  # noqa: E731
    with pytest.raises(InterruptedError):
        fresh.update(should_stop=stop, progress=seen.append)
    assert [s.done for s in seen if s.stage == "instance walk"] == [1, 2, 3, 4, 5]  # stopped inside the walk
    assert "iwalk" not in fresh.last_recomputed and "clusters" in fresh.last_recomputed


def test_the_panels_run_job_yields_walk_steps_and_a_cancel_stops_inside_the_walk(monkeypatch, tmp_path):
    import napari_irnet._napari.jobs as jobs
    from napari_irnet.models.checkpoint import new_irnet, new_model
    from napari_irnet.progress import Step
    # one walk step per call of the stencil loop, as on grids of a megapixel (tiny grids run all their steps in one)
    monkeypatch.setattr(walkers, "STENCIL_CALL_VALUES", 1)

    model = new_model(["a"], "tiny")
    model.irn = new_irnet(model, "cam")
    model.params = FAST
    monkeypatch.setattr(jobs, "load_model", lambda path: model)
    monkeypatch.setattr(jobs, "run_networks", lambda *args: _two_blobs())
    image = np.zeros((64, 128, 3), np.uint8)
    job = jobs.run_job("m.pt", image, ["a"], device="cpu")
    items = []
    for item in job:
        items.append(item)
        if isinstance(item, Step) and item.stage == "instance walk" and item.done == 3:
            job.close()  # what the worker's quit() does at a yield
            break
    assert items[:4] == ["loading checkpoint", "classes given", "CAM + IRNet", "post-processing"]
    assert [i.done for i in items if isinstance(i, Step) and i.stage == "instance walk"] == [1, 2, 3]
    with pytest.raises(ValueError, match="the image: image is 128 x 64 = 8,192 pixels, more than the limit of 1,000"):
        next(jobs.run_job("m.pt", image, ["a"], device="cpu", max_pixels=1000))


def test_instances_first_then_semantic():
    cache = StageCache(_two_blobs(), FAST)
    full = cache.update()
    first = cache.update(FAST.replace(beta=5.0), with_semantic=False)
    assert set(cache.last_recomputed) == {"weights", "iwalk", "instances"}
    assert first.semantic is full.semantic  # the last one computed, not yet redone
    second = cache.update()
    assert set(cache.last_recomputed) == {"swalk", "semantic"}
    fresh = postprocess(_two_blobs(), FAST.replace(beta=5.0))
    np.testing.assert_array_equal(second.semantic, fresh.semantic)
    np.testing.assert_array_equal(second.instances.labels, first.instances.labels)


def test_an_image_without_classes_is_cached_too():
    outputs = _two_blobs()
    outputs.cam = CAMOutput(np.zeros(0, np.int64), outputs.cam.strided[:0], outputs.cam.high_res[:0])
    cache = StageCache(outputs, FAST)
    pred = cache.update()
    assert pred.instances.records == [] and not pred.semantic.any()
    cache.update()
    assert cache.last_recomputed == []


def test_without_seeds_the_stage_is_skipped_and_the_instances_are_the_same():
    outputs = _two_blobs()
    cache = StageCache(outputs, FAST, seeds=False)
    pred = cache.update()
    assert pred.seeds is None and "seeds" not in cache.last_recomputed
    ref = postprocess(outputs, FAST)
    assert ref.seeds is not None
    np.testing.assert_array_equal(pred.instances.labels, ref.instances.labels)
    np.testing.assert_array_equal(postprocess(outputs, FAST, seeds=False).semantic, ref.semantic)


def test_the_image_is_segmented_once_for_every_seed_threshold(monkeypatch):
    import napari_irnet.pipeline.cache as cache_module

    calls = []
    real = cache_module.image_segments
    monkeypatch.setattr(cache_module, "image_segments", lambda image: calls.append(image.shape) or real(image))
    monkeypatch.setattr(cache_module, "crf_available", lambda: False)
    outputs = _two_blobs()
    image = np.full((64, 128, 3), 200, np.uint8)
    image[16:48, 16:48] = (90, 30, 120)
    cache = StageCache(outputs, FAST.replace(use_crf=True), image)
    first = cache.update().seeds
    for fg in (0.4, 0.5, 0.6):
        cache.update(FAST.replace(use_crf=True, seed_fg_threshold=fg))
        assert cache.last_recomputed == ["seeds"]
    assert calls == [(64, 128, 3)]
    # the same seeds as without the kept segments
    from napari_irnet.pipeline.stages import seeds_from_cams

    with pytest.warns(UserWarning, match="pydensecrf"):
        import napari_irnet.pipeline.stages as stages

        monkeypatch.setattr(stages, "_dense_crf", lambda *a: None)
        monkeypatch.setattr(stages, "_crf_notice_given", False)
        fresh = seeds_from_cams(outputs.cam.high_res, outputs.cam.class_ids, 0.3, 0.05, image, True)
    np.testing.assert_array_equal(first, fresh)
