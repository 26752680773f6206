"""The instance walk in windows against the global walk over the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.pipeline import walkers
from napari_irnet.pipeline.instance_walk import instance_walk_argmax, iter_instance_walk, plan_windows
from napari_irnet.pipeline.stages import assign_from_argmax
from napari_irnet.progress import Step

STEPS = 64  # enough to spread mass over tens of cells, small enough for a unit test


def _blobs(h: int = 48, w: int = 80, n: int = 10, wall: float = 0.6, seed: int = 0):
    """Discs of two classes with boundary rings, clusters as the Voronoi cells of their centres.

    Returns (cams (2, h, w), boundary (h, w), clusters (h, w) int32).
    """
    rng = np.random.default_rng(seed)
    centres = np.stack([rng.uniform(5, h - 5, n), rng.uniform(5, w - 5, n)], axis=1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    nearest = dist.argmin(0)
    radius = rng.uniform(2.5, 4.5, n)
    classes = np.arange(n) % 2
    cams = np.zeros((2, h, w), np.float32)
    for i in range(n):
        cams[classes[i]] = np.maximum(cams[classes[i]], np.exp(-((dist[i] / radius[i]) ** 2)))
    ring = np.zeros((h, w), np.float32)
    for i in range(n):
        ring = np.maximum(ring, wall * np.exp(-(((dist[i] - radius[i] - 1.0) / 0.8) ** 2)))
    return torch.from_numpy(cams), torch.from_numpy(ring), nearest.astype(np.int32)


def _planes_agree(a, b, threshold: float) -> float:
    """Fraction of pixels whose assignment (plane, or background under ``threshold``) agrees."""
    fa = (a[0] / a[2]).numpy() >= threshold
    fb = (b[0] / b[2]).numpy() >= threshold
    same = (fa == fb) & (~fa | (a[1].numpy() == b[1].numpy()))
    return float(same.mean())


def _walk(cams, boundary, clusters, **kw):
    shape = (4 * boundary.shape[0], 4 * boundary.shape[1])
    return instance_walk_argmax(cams, boundary, clusters, shape, steps=STEPS, **kw)


def test_windows_cover_a_fraction_of_what_the_global_walk_propagates():
    cams, boundary, clusters = _blobs()
    plan = plan_windows((cams * (1 - boundary)).numpy(), clusters, tolerance=0.01, margin=4)
    assert plan.planes == 2 * 10
    assert 10 <= len({w.plane for w in plan.windows}) < 20  # planes of the absent class are not walked
    assert plan.window_cells < plan.global_cells / 4


@pytest.mark.parametrize("wall", [0.9, 0.3])
def test_local_walk_agrees_with_the_global_walk(wall):
    cams, boundary, clusters = _blobs(wall=wall)
    glob, gplan = _walk(cams, boundary, clusters, method="global")
    loc, lplan = _walk(cams, boundary, clusters, method="local")
    assert gplan.method == "global" and lplan.method == "local"
    assert lplan.window_cells < lplan.global_cells
    torch.testing.assert_close(loc[2], glob[2])  # the global maximum lies inside a window
    for threshold in (0.25, 0.4):
        assert _planes_agree(loc, glob, threshold) >= 0.995
    k = int(clusters.max()) + 1
    ids = np.repeat([0, 1], k)
    a = assign_from_argmax(glob, ids, loc[0].shape, 0.25, 0.0)
    b = assign_from_argmax(loc, ids, loc[0].shape, 0.25, 0.0)
    assert len(a.records) == len(b.records) >= 5


def test_weak_walls_make_windows_grow_and_zero_tolerance_is_the_global_walk():
    # almost no boundary: mass spreads far, the first windows leak and must grow
    cams, boundary, clusters = _blobs(wall=0.05)
    glob, _ = _walk(cams, boundary, clusters, method="global")
    loc, plan = _walk(cams, boundary, clusters, method="local", tolerance=0.01)
    assert plan.rounds >= 1 and plan.grown >= 1
    assert _planes_agree(loc, glob, 0.25) >= 0.995
    exact, plan0 = _walk(cams, boundary, clusters, method="local", tolerance=0.0)
    assert all(w.area == boundary.numel() for w in plan0.windows)  # grown to the whole grid
    torch.testing.assert_close(exact[0], glob[0], atol=1e-6, rtol=1e-5)
    assert _planes_agree(exact, glob, 0.25) >= 0.9999


def test_auto_walks_globally_when_windows_would_cost_more():
    cams, boundary, clusters = _blobs(h=16, w=16, n=1)
    _, plan = _walk(cams[:1], boundary, clusters, method="auto")
    assert plan.method == "global"
    cams, boundary, clusters = _blobs()
    _, plan = _walk(cams, boundary, clusters, method="auto")
    assert plan.method == "local"


def test_nothing_to_walk_gives_none():
    cams, boundary, clusters = _blobs()
    argmax, plan = _walk(torch.zeros_like(cams), boundary, clusters, method="local")
    assert argmax is None and plan.windows == []


def test_steps_are_reported_and_the_walk_stops_at_a_step(monkeypatch):
    # one walk step per call of the stencil loop, as on grids of a megapixel (tiny grids run all their steps in one)
    monkeypatch.setattr(walkers, "STENCIL_CALL_VALUES", 1)
    cams, boundary, clusters = _blobs()
    shape = (4 * boundary.shape[0], 4 * boundary.shape[1])
    steps = list(_drain(iter_instance_walk(cams, boundary, clusters, shape, steps=STEPS, method="local")))
    assert steps and all(isinstance(s, Step) and s.stage == "instance walk" for s in steps)
    done = [s.done for s in steps]
    assert done == sorted(done) and done[-1] == steps[-1].total >= STEPS

    seen = []

    def stop_after_ten(step):
        seen.append(step)
        if len(seen) == 10:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        instance_walk_argmax(cams, boundary, clusters, shape, steps=STEPS, method="local", progress=stop_after_ten)
    assert len(seen) == 10


def _drain(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_unknown_method_is_refused():
    cams, boundary, clusters = _blobs()
    with pytest.raises(ValueError, match="unknown instance walk method 'magic'"):
        _walk(cams, boundary, clusters, method="magic")


def test_windows_of_unchanged_clusters_are_taken_from_the_memo():
    cams, boundary, clusters = _blobs()
    memo: dict = {}
    first, plan1 = _walk(cams, boundary, clusters, method="local", memo=memo)
    assert plan1.reused == 0 and plan1.walked >= len(plan1.windows) and memo
    again, plan2 = _walk(cams, boundary, clusters, method="local", memo=memo)
    assert plan2.walked == 0 and plan2.reused >= len(plan2.windows)  # nothing changed: nothing walked
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    # one cluster gives a corner of its cells to another: only the windows of those two change
    moved = clusters.copy()
    ys, xs = np.nonzero(moved == 3)
    corner = (ys < ys.min() + 3) & (xs < xs.min() + 3)
    moved[ys[corner], xs[corner]] = 4
    changed, plan3 = _walk(cams, boundary, moved, method="local", memo=memo)
    fresh, _ = _walk(cams, boundary, moved, method="local")
    torch.testing.assert_close(changed[0], fresh[0], rtol=0, atol=0)
    assert torch.equal(changed[1], fresh[1])
    assert 1 <= plan3.walked <= 2 * len([w for w in plan3.windows if w.plane % 10 in (3, 4)])
    assert plan3.walked < plan1.walked / 2


def test_windows_packed_edge_to_edge_walk_as_if_each_were_alone(monkeypatch):
    # canvases hold many windows without gaps; weights across a window's edge are cut,
    # so every window's walk is the walk of that window alone
    import napari_irnet.pipeline.instance_walk as iw
    from napari_irnet.pipeline.random_walk import transition_weights

    cams, boundary, clusters = _blobs(wall=0.3)
    start = cams * (1.0 - boundary)
    weights = transition_weights(boundary, radius=5, beta=10.0)
    plan = plan_windows(start.numpy(), clusters, 0.01, 4)
    windows = plan.windows[:6]
    k_total = int(clusters.max()) + 1

    def walk(wins):
        counter = [0, 0, 0]
        return list(_drain_value(iw._walk_new_windows(wins, start, weights, STEPS, 5, k_total, counter, "walk")))

    monkeypatch.setattr(iw, "CANVAS_MIN_CELLS", 10**9)  # all six in one canvas
    packed = walk(windows)
    assert iw._canvas_count(sum(win.area for win in windows), 2) == 1
    for win, part in zip(windows, packed):
        alone = walk([win])[0]
        assert part.shape == (win.y1 - win.y0, win.x1 - win.x0)
        torch.testing.assert_close(part, alone, rtol=0, atol=0)
    assert any(bool((part[0] > 0).any() or (part[:, 0] > 0).any()) for part in packed)  # mass does reach window edges


def _drain_value(gen):
    """The value a step generator returns."""
    while True:
        try:
            next(gen)
        except StopIteration as result:
            return result.value


def test_overlapping_windows_of_a_plane_add_up_and_grown_windows_keep_their_cells():
    import napari_irnet.pipeline.walk_windows as ww

    a = ww.Window(3, 0, 4, 0, 5, 2, np.ones((4, 5), bool))
    b = ww.Window(3, 2, 6, 3, 9, 2, np.ones((4, 6), bool))
    c = ww.Window(5, 2, 6, 3, 9, 2)  # another plane: kept apart
    pa, pb, pc = torch.full((4, 5), 1.0), torch.full((4, 6), 2.0), torch.full((4, 6), 7.0)
    wins, parts = ww.sum_overlaps([a, b, c], [pa, pb, pc])
    assert [(w.plane, w.y0, w.y1, w.x0, w.x1) for w in wins] == [(3, 0, 6, 0, 9), (5, 2, 6, 3, 9)]
    expected = torch.zeros((6, 9))
    expected[0:4, 0:5] += 1.0
    expected[2:6, 3:9] += 2.0
    torch.testing.assert_close(parts[0], expected, rtol=0, atol=0)  # 3 where both windows overlap
    assert parts[1] is pc
    own = np.zeros((4, 5), bool)
    own[1, 2] = True
    grown = ww.grow(ww.Window(0, 10, 14, 10, 15, 2, own), (40, 40))
    assert (grown.y0, grown.y1, grown.x0, grown.x1) == (6, 18, 6, 19)
    assert grown.own.shape == (12, 13) and grown.own.sum() == 1 and grown.own[1 + 4, 2 + 4]


def test_window_plans_are_kept_for_other_walk_parameters(monkeypatch):
    import napari_irnet.pipeline.instance_walk as iw

    cams, boundary, clusters = _blobs()
    calls = []
    real = iw.plan_windows
    monkeypatch.setattr(iw, "plan_windows", lambda *a: calls.append(1) or real(*a))
    plans: dict = {}
    first, _ = _walk(cams, boundary, clusters, method="local", plans=plans, beta=10.0)
    other, _ = _walk(cams, boundary, clusters, method="local", plans=plans, beta=8.0)  # same starts and clusters
    fresh, _ = _walk(cams, boundary, clusters, method="local", beta=8.0)
    assert len(calls) == 2  # planned once with ``plans``, once without
    torch.testing.assert_close(other[0], fresh[0], rtol=0, atol=0)
    assert not torch.equal(other[0], first[0])
    moved = clusters.copy()
    moved[moved == 3] = 4
    _walk(cams, boundary, moved, method="local", plans=plans)
    assert len(calls) == 3 and len(plans) == 2  # other clusters: planned again


def test_the_full_resolution_argmax_in_row_bands_on_threads_equals_one_pass():
    import napari_irnet.pipeline.instance_walk as iw

    cams, boundary, clusters = _blobs(h=40, w=56, n=12)
    start = cams * (1.0 - boundary)
    plan = plan_windows(start.numpy(), clusters, 0.01, 4)
    g = torch.Generator().manual_seed(3)
    walked = [torch.rand((win.y1 - win.y0, win.x1 - win.x0), generator=g) for win in plan.windows]
    shape = (4 * 40 - 3, 4 * 56 - 1)  # the image is a little smaller than 4 × the grid
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = iw._full_resolution_argmax(plan.windows, walked, shape)
        torch.set_num_threads(3)  # three bands, windows across their edges
        three = iw._full_resolution_argmax(plan.windows, walked, shape)
    finally:
        torch.set_num_threads(before)
    assert len(plan.windows) > 12 and bool((one[1] > 0).any())
    for a, b in zip(one, three):
        assert torch.equal(a, b)
