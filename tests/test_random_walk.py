"""The stencil random walk against the reference's dense formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.pipeline import walkers
from napari_irnet.pipeline.random_walk import apply_transition, neighbour_offsets, random_walk, random_walk_dense, transition_weights

METHODS = ["stencil", "gather"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def random_inputs(shape, channels, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(shape, generator=g, dtype=dtype) ** 3  # mostly low, some walls
    x = torch.rand((channels, *shape), generator=g, dtype=dtype)
    return x, boundary


def ring(h: int, w: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).double().sqrt()
    return dist, ((dist - radius).abs() < 1.0).double()


def test_neighbour_offsets():
    offsets = neighbour_offsets(5)
    assert offsets.shape == (69, 2)
    assert offsets[0].tolist() == [0, 0]
    assert len({tuple(o) for o in offsets.tolist()}) == 69
    np.testing.assert_array_equal(offsets[35:], -offsets[1:35])
    assert (offsets**2).sum(axis=1).max() < 25


def test_transition_weights_normalised_and_zero_outside():
    _, boundary = random_inputs((7, 11), 1, seed=1)
    weights = transition_weights(boundary)
    assert weights.shape == (69, 7, 11) and weights.dtype == torch.float64
    torch.testing.assert_close(weights.sum(0), torch.ones(7, 11, dtype=torch.float64))
    for k, (dy, dx) in enumerate(neighbour_offsets(5).tolist()):
        yy, xx = np.meshgrid(np.arange(7) + dy, np.arange(11) + dx, indexing="ij")
        outside = torch.from_numpy((yy < 0) | (yy >= 7) | (xx < 0) | (xx >= 11))
        assert torch.all(weights[k][outside] == 0)


def test_transition_weights_symmetric_before_normalisation():
    # A^β symmetric: w[fwd δ](p) d(p) == w[bwd δ](p + δ) d(p + δ)
    _, boundary = random_inputs((9, 10), 1, seed=2)
    weights = transition_weights(boundary, beta=10.0)
    degree = 1.0 / weights[0]  # the self weight is 1 / d
    unnormalised = weights * degree
    for d, (dy, dx) in enumerate(neighbour_offsets(5)[1:35].tolist()):
        fwd = unnormalised[1 + d, : 9 - dy, max(0, -dx) : 10 - max(0, dx)]
        bwd = unnormalised[35 + d, dy:, max(0, dx) : 10 + min(0, dx)]
        torch.testing.assert_close(fwd, bwd)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "steps"), [((9, 13), 256), ((16, 16), 256), ((16, 16), 8), ((9, 13), 1)])
def test_walk_equals_dense_formulation_float64(method, shape, steps):
    x, boundary = random_inputs(shape, channels=3, seed=sum(shape) + steps)
    dense = random_walk_dense(x, boundary, beta=10.0, steps=steps, radius=5)
    walked = random_walk(x, boundary, beta=10.0, steps=steps, radius=5, method=method)
    assert walked.shape == x.shape and walked.dtype == torch.float64
    assert relative_error(walked, dense) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (2, 9), (12, 4)])
def test_tiny_and_non_square_grids(method, shape):
    x, boundary = random_inputs(shape, channels=2, seed=3)
    dense = random_walk_dense(x, boundary, steps=16)
    walked = random_walk(x, boundary, steps=16, method=method)
    assert relative_error(walked, dense) < 1e-10


def test_many_channels_auto_and_chunks_match_dense():
    x, boundary = random_inputs((9, 13), channels=12, seed=9)  # auto -> "gather" on CPU
    dense = random_walk_dense(x, boundary, steps=32)
    assert relative_error(random_walk(x, boundary, steps=32), dense) < 1e-10
    chunked = random_walk(x, boundary, steps=32, channel_chunk=5, method="gather")
    assert relative_error(chunked, dense) < 1e-10


def test_float32_close_to_float64_and_dtype_preserved():
    x, boundary = random_inputs((10, 12), channels=2, seed=4)
    reference = random_walk(x, boundary, steps=256)
    for method in METHODS:
        single = random_walk(x.float(), boundary.float(), steps=256, method=method)
        assert single.dtype == torch.float32
        assert relative_error(single.double(), reference) < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_closed_ring_stops_the_walk(method):
    h, w = 24, 30
    dist, boundary = ring(h, w, 11.0, 13.0, 6.0)
    inside = dist <= 5.0  # everything enclosed by the ring 5 < dist < 7
    outside = dist >= 7.0
    x = torch.zeros(2, h, w, dtype=torch.float64)
    x[0][inside] = 1.0  # mass inside the ring
    x[1][dist < 2.0] = 3.0  # a small blob in the centre
    walked = random_walk(x, boundary, steps=256, method=method)
    assert float(walked[:, outside].abs().max()) < 1e-30
    # a constant inside a closed region is a fixed point
    torch.testing.assert_close(walked[0][inside], torch.ones_like(walked[0][inside]))
    # the blob spreads over the whole inside region, and stays there
    assert float(walked[1][inside].min()) > 0.1


def test_invariants_on_zero_boundary():
    """T = A^β D⁻¹ is column-stochastic, and x ← x·T averages: constants are fixed
    points and Σ d_j x_j is conserved, with d_j the (unnormalised) degree.  The plain
    sum Σ x_j is *not* conserved where degrees differ (near the image border)."""
    h, w = 14, 17
    boundary = torch.zeros(h, w, dtype=torch.float64)
    ones = torch.ones(1, h, w, dtype=torch.float64)
    torch.testing.assert_close(random_walk(ones, boundary, steps=64), ones)

    degree = torch.zeros(h, w, dtype=torch.float64)  # in-image neighbours incl. self
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for dy, dx in neighbour_offsets(5).tolist():
        degree += ((yy + dy >= 0) & (yy + dy < h) & (xx + dx >= 0) & (xx + dx < w)).double()
    x, _ = random_inputs((h, w), channels=3, seed=5)
    x[:, :4, :4] += 5.0  # extra mass near a corner, where degrees are small
    walked = random_walk(x, boundary, steps=64)
    torch.testing.assert_close((walked * degree).sum((1, 2)), (x * degree).sum((1, 2)))
    assert torch.all((walked.sum((1, 2)) - x.sum((1, 2))).abs() > 1.0)
    # and the dense reference agrees with both statements
    dense = random_walk_dense(x, boundary, steps=64)
    torch.testing.assert_close((dense * degree).sum((1, 2)), (x * degree).sum((1, 2)))


def test_channel_chunks_and_progress():
    x, boundary = random_inputs((8, 11), channels=5, seed=6)
    calls = []
    whole = random_walk(x, boundary, steps=16)
    chunked = random_walk(
        x, boundary, steps=16, channel_chunk=2, progress=lambda d, n: calls.append((d, n))
    )
    torch.testing.assert_close(chunked, whole)
    # one call per step on one thread; walks side by side report as their steps add up
    assert calls[-1] == (48, 48) and 1 <= len(calls) <= 48
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})


@pytest.mark.parametrize("method", ["stencil", "gather"])
def test_walks_side_by_side_in_threads_equal_one_after_another(method, monkeypatch):
    import napari_irnet.pipeline.random_walk as rw
    from napari_irnet.pipeline.random_walk import iter_transition
    from napari_irnet.progress import run_steps

    monkeypatch.setattr(rw, "PARALLEL_MIN_VALUES", 0)  # threads even for this small walk
    monkeypatch.setattr(walkers, "STENCIL_BAND_VALUES", 5 * 41 * 3)  # bands of 3 rows, shared by the threads

    x, boundary = random_inputs((30, 41), channels=5, seed=8)
    weights = transition_weights(boundary)
    before = torch.get_num_threads()
    one = run_steps(iter_transition(x, weights, 24, method=method, threads=1))
    two = run_steps(iter_transition(x, weights, 24, method=method, threads=2))
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    assert torch.get_num_threads() == before  # the caller's setting is back


def test_closing_a_threaded_walk_stops_every_thread(monkeypatch):
    import threading

    import napari_irnet.pipeline.random_walk as rw
    from napari_irnet.pipeline.random_walk import iter_transition

    monkeypatch.setattr(rw, "PARALLEL_MIN_VALUES", 0)
    monkeypatch.setattr(walkers, "STENCIL_BAND_VALUES", 4 * 60 * 5)  # bands of 5 rows, shared by the threads

    x, boundary = random_inputs((60, 60), channels=4, seed=9)
    before = torch.get_num_threads()
    walking = iter_transition(x, transition_weights(boundary), 100_000, threads=2)
    next(walking)
    assert [t for t in threading.enumerate() if t.name.startswith("napari-irnet-walk")]  # the rows are shared
    walking.close()  # a Cancel: the workers stop at their next step and are joined
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-irnet-walk")]
    assert torch.get_num_threads() == before


def test_small_walks_stay_on_one_thread_large_ones_are_split():
    from napari_irnet.pipeline.random_walk import GATHER_MIN_CHANNELS, PARALLEL_MIN_VALUES, _walk_layout

    cpu = torch.device("cpu")
    # (method, channels at once, threads sharing a walk's rows, threads walking chunks side by side)
    assert _walk_layout(3, 30 * 41, cpu, "auto", None, 2) == ("stencil", 3, 1, 1)  # a few thousand values per thread
    cells = 2 * PARALLEL_MIN_VALUES // 3 + 1
    assert _walk_layout(3, cells, cpu, "auto", None, 2) == ("stencil", 3, 2, 1)  # rows split, all 3 maps at once
    many = 4 * GATHER_MIN_CHANNELS
    assert _walk_layout(many, cells, cpu, "auto", None, 2) == ("gather", many // 2, 1, 2)  # a chunk per thread
    assert _walk_layout(3, cells, torch.device("meta"), "auto", None, 2) == ("stencil", 3, 1, 1)  # other devices: one walk


def test_apply_transition_validates_inputs():
    x, boundary = random_inputs((8, 11), channels=1, seed=7)
    weights = transition_weights(boundary)
    with pytest.raises(ValueError):
        apply_transition(x[:, :4], weights, steps=2)
    with pytest.raises(ValueError):
        apply_transition(x, weights, steps=2, radius=4)
    with pytest.raises(ValueError):
        apply_transition(x, weights, steps=2, method="magic")
    with pytest.raises(ValueError):
        random_walk_dense(x, boundary, steps=12)


def test_zero_steps_is_masking_only():
    x, boundary = random_inputs((6, 7), channels=2, seed=8)
    torch.testing.assert_close(random_walk(x, boundary, steps=0), x * (1 - boundary))


def _drain_walker(walking):
    done = []
    while True:
        try:
            done.append(next(walking))
        except StopIteration as result:
            return done, result.value


def test_the_stencil_runs_several_steps_per_call_with_the_same_sums(monkeypatch):
    import napari_irnet.pipeline.random_walk as rw

    x, boundary = random_inputs((12, 17), channels=3, seed=10, dtype=torch.float32)
    weights = transition_weights(boundary)
    dense = random_walk_dense(x.double(), boundary.double(), steps=16)  # walks x ⊙ (1 - boundary)
    x = x * (1 - boundary)
    monkeypatch.setattr(walkers, "STENCIL_CALL_VALUES", 1)
    every, one = _drain_walker(rw.make_walker(weights)(x, 16))
    monkeypatch.setattr(walkers, "STENCIL_CALL_VALUES", 5 * x.numel())
    fives, five = _drain_walker(rw.make_walker(weights)(x, 16))
    assert every == list(range(1, 17)) and fives == [5, 10, 15, 16]
    torch.testing.assert_close(five, one, rtol=0, atol=0)
    torch.testing.assert_close(one.double(), dense, rtol=1e-4, atol=1e-6)


def test_the_stencil_loop_runs_in_python_where_torchscript_fails(monkeypatch):

    x, boundary = random_inputs((9, 14), channels=2, seed=11, dtype=torch.float32)
    weights = transition_weights(boundary)
    walkers._compile_stencil_steps.cache_clear()
    assert isinstance(walkers._compiled_stencil_steps(), torch.jit.ScriptFunction)
    compiled = apply_transition(x, weights, 12, method="stencil")

    def no_torchscript(fn):
        raise RuntimeError("TorchScript cannot read the source")

    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    walkers._compile_stencil_steps.cache_clear()
    try:
        assert walkers._compiled_stencil_steps() is walkers._stencil_steps
        python = apply_transition(x, weights, 12, method="stencil")
    finally:
        walkers._compile_stencil_steps.cache_clear()
    torch.testing.assert_close(python, compiled, rtol=0, atol=0)


def test_threads_started_after_a_threaded_walk_keep_the_callers_thread_count(monkeypatch):
    # PyTorch gives every new thread the count last set by any thread: a helper's
    # set_num_threads(1) must not leave the plugin's next worker thread on one core
    import threading

    import napari_irnet.pipeline.random_walk as rw
    from napari_irnet.pipeline.random_walk import iter_transition
    from napari_irnet.pipeline.threads import side_by_side
    from napari_irnet.progress import run_steps

    monkeypatch.setattr(rw, "PARALLEL_MIN_VALUES", 0)
    monkeypatch.setattr(walkers, "STENCIL_BAND_VALUES", 2 * 40 * 4)
    x, boundary = random_inputs((40, 40), channels=2, seed=12)
    many = torch.rand(4 * rw.GATHER_MIN_CHANNELS, 40, 40, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_steps(iter_transition(x, transition_weights(boundary), 8, threads=2))  # rows shared by 2 threads
        run_steps(iter_transition(many, transition_weights(boundary), 8, threads=2))  # chunks side by side
        list(side_by_side(lambda v: torch.ones(3).sum() + v, [1, 2, 3]))
        seen = []
        fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_that_start_walking_at_once_share_one_compiled_loop():
    from concurrent.futures import ThreadPoolExecutor

    walkers._compile_stencil_steps.cache_clear()
    try:
        with ThreadPoolExecutor(4) as pool:
            loops = list(pool.map(lambda _: walkers._compiled_stencil_steps(), range(8)))
    finally:
        walkers._compile_stencil_steps.cache_clear()
    assert all(loop is loops[0] for loop in loops) and isinstance(loops[0], torch.jit.ScriptFunction)
