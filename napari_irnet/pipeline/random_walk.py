"""Random walk of class/instance maps on the boundary-derived affinity graph.

IRNet (Ahn, Cho and Kwak, CVPR 2019, Eq. 6-8) propagates each attention map
``M`` as ``vec(M*) = T^t · vec(M ⊙ (1 - B))``.  The reference implementation
(jiwoon-ahn/irn, ``misc/indexing.py`` ``propagate_to_edge``) does it like this:

1. pad the boundary map ``B`` (h, w) with 1.0 on the left, right and bottom
   by ``r`` so that pairs leaving the image get affinity 0;
2. affinity of every forward pair within radius ``r``:
   ``a = 1 - max(B on the path)`` (see :mod:`.path_index`);
3. a dense ``N × N`` matrix ``A`` (``N = h·w``) with those affinities, their
   transposes and a unit diagonal (so ``A`` is symmetric, 69 non-zeros per
   interior row at ``r = 5``);
4. ``T = A^β D⁻¹`` (element-wise power, then division by column sums
   ``d_j = Σ_i A[i, j]^β``), squared ``log2(t)`` times;
5. ``rw = x @ T^t`` with ``x = maps ⊙ (1 - B)`` flattened to ``(C, N)``.

One step is therefore ``x'[j] = Σ_i x[i] A[i, j]^β / d_j``: every pixel
becomes the ``A^β``-weighted *average* of its 69-neighbourhood.  Because ``A``
is symmetric, ``d_j`` is also pixel ``j``'s own weight sum, so ``T`` leaves
constant maps unchanged and keeps ``Σ_j d_j x[j]`` constant (it does *not*
keep ``Σ_j x[j]`` constant: the degrees are smaller along image borders and
boundaries).

This module computes the same ``x @ T^t`` without any ``N × N`` matrix: the
69 column-normalised weights of every pixel are stored as a ``(K, h, w)``
stencil (``weights[k, j] = T[j + o_k, j]``) and ``t`` steps are applied, either
as shifted-slice multiply-adds over all channels (``method="stencil"``, any
device, best for few channels) or as one fused weighted gather-sum per step
(``method="gather"``, ``embedding_bag``; best on CPU for many channels).
Memory is ``O((K + 2C)·N)`` and time ``O(t·K·C·N)``, against ``O(N²)`` memory
and ``O(N³ log t)`` time for the dense squaring, kept here as
:func:`random_walk_dense` for tests and benchmarks.  The walk is inference
only: it runs without autograd.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_EXCEPTION, wait

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Step, StepGenerator, run_steps
from .path_index import PathIndex, boundary_to_affinity, grouped_paths, max_along_paths, search_directions
from .threads import helper_threads
from .walkers import Walker, gather_walker, stencil_walker

__all__ = [
    "apply_transition",
    "iter_transition",
    "iter_walks",
    "make_walker",
    "neighbour_offsets",
    "random_walk",
    "random_walk_dense",
    "transition_weights",
]

ProgressCallback = Callable[[int, int], None]


def neighbour_offsets(radius: int = 5) -> np.ndarray:
    """Offsets of the stencil: self, the forward directions, the backward ones.

    Returns
    -------
    numpy.ndarray
        ``(K, 2)`` int64 ``(dy, dx)`` with ``K = 2 D + 1`` (69 at radius 5):
        row 0 is ``(0, 0)``, rows ``1..D`` are :func:`search_directions` and
        rows ``D+1..2D`` their negatives, in the same order.
    """
    forward = search_directions(radius)
    return np.concatenate([np.zeros((1, 2), np.int64), forward, -forward], axis=0)


def _check_boundary(boundary: torch.Tensor) -> torch.Tensor:
    if boundary.dim() == 3 and boundary.shape[0] == 1:
        boundary = boundary[0]
    if boundary.dim() != 2:
        raise ValueError(f"boundary must be (h, w), got {tuple(boundary.shape)}")
    return boundary


def _forward_affinity(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """``(D, h, w)`` affinity of each pixel with its forward neighbours.

    Pairs whose destination (or any path point) leaves the image get 0, as
    with the reference's padding of the boundary map by 1.0.
    """
    h, w = boundary.shape
    r = int(radius)
    padded = F.pad(boundary[None], (r, r, 0, r), value=1.0)
    path_max = max_along_paths(padded, grouped_paths(r), origin=(0, r), size=(h, w))
    return 1.0 - path_max[0]


def transition_weights(
    boundary: torch.Tensor, radius: int = 5, beta: float = 10.0
) -> torch.Tensor:
    """Column-normalised transition weights of every pixel as a stencil.

    Parameters
    ----------
    boundary : torch.Tensor
        ``(h, w)`` boundary probabilities in [0, 1] (stride-4 grid).
    radius : int
        Pairs within Euclidean distance < ``radius`` are connected.
    beta : float
        Exponent on the affinities (the paper's β).

    Returns
    -------
    torch.Tensor
        ``(K, h, w)`` with ``K = 2 D + 1`` in the order of
        :func:`neighbour_offsets`: ``weights[k, y, x] = T[(y, x) + o_k, (y, x)]``
        with ``T = A^β D⁻¹`` as in the reference, i.e.
        ``A[p, p + o_k]^β / Σ_q A[p, q]^β``.  Offsets leaving the image have
        weight 0; ``weights.sum(0) == 1``.  Same dtype and device as
        ``boundary``.
    """
    boundary = _check_boundary(boundary)
    h, w = boundary.shape
    forward = torch.pow(_forward_affinity(boundary, radius), beta)  # A^β, (D, h, w)
    # backward neighbour p - δ of p: weight A[p - δ, p]^β = forward[δ][p - δ]
    p = int(radius) - 1
    padded = F.pad(forward, (p, p, p, 0))  # zeros: no pair beyond the image
    backward = torch.stack(
        [
            padded[d, p - dy : p - dy + h, p - dx : p - dx + w]
            for d, (dy, dx) in enumerate(search_directions(radius).tolist())
        ]
    )
    unnormalised = torch.cat([torch.ones_like(forward[:1]), forward, backward], dim=0)
    return unnormalised / unnormalised.sum(dim=0, keepdim=True)


#: on the CPU, a walk is split over threads only when each part has at least this many values
#: (channels × grid cells). The compiled stencil loop runs without Python's lock, so small
#: parts gain too: the semantic walk of a 512² image (3 maps of 128²) took 0.15 s on one
#: thread and 0.12 s as two parts (2-core CPU, bundled demo model)
PARALLEL_MIN_VALUES = 1 << 14
#: on CPU, walks with more channels than this use ``"gather"``, others ``"stencil"``
GATHER_MIN_CHANNELS = 8
_WALKERS = {"stencil": stencil_walker, "gather": gather_walker}


def _choose_method(method: str, device: torch.device, channels: int) -> str:
    if method == "auto":
        many = channels > GATHER_MIN_CHANNELS
        return "gather" if device.type == "cpu" and many else "stencil"
    if method not in _WALKERS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(_WALKERS)} or 'auto'")
    return method


def make_walker(weights: torch.Tensor, radius: int = 5, method: str = "stencil") -> Walker:
    """A walk over stencil ``weights`` (:func:`transition_weights`): ``walker(x, steps)``.

    The walker is a generator function: it yields the number of steps done
    (after every step, or every few) and returns the walked ``(C, h, w)`` maps. ``method`` as in
    :func:`apply_transition` ("stencil" or "gather").
    """
    if method not in _WALKERS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(_WALKERS)}")
    return _WALKERS[method](weights, neighbour_offsets(radius))


WalkJob = Callable[[], Generator[int, None, torch.Tensor]]


@contextlib.contextmanager
def _one_torch_thread(device: torch.device):
    """Run the walk's many small operations on one torch thread of the calling thread.

    A walk step is dozens of short operations; spread over OpenMP threads each
    ends in a barrier where the threads wait for each other, which on a
    shared machine (another process, napari's own threads) made the walk
    tens to hundreds of times slower (BENCHMARKS.md, Scale). Independent
    walks run side by side in Python threads instead (:func:`iter_walks`).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def iter_walks(jobs: list[WalkJob], steps: int, stage: str, device: torch.device, threads: int | None = None) -> StepGenerator[list[torch.Tensor]]:
    """Run independent walks (each a generator yielding its steps done so far); returns their results.

    On the CPU the walks run side by side in up to ``threads`` Python threads
    (default: the calling thread's torch thread count), each with one torch
    thread: no barriers between the threads within a step. Yields a
    :class:`~.progress.Step` as the steps of all walks add up (``total =
    steps × len(jobs)``); closing the generator stops every walk at its next
    step.
    """
    total = steps * len(jobs)
    threads = torch.get_num_threads() if threads is None else int(threads)
    if device.type != "cpu" or threads <= 1 or len(jobs) <= 1:
        results = []
        with _one_torch_thread(device), torch.no_grad():
            for i, make in enumerate(jobs):
                walking = make()
                while True:
                    try:
                        done = next(walking)
                    except StopIteration as result:
                        results.append(result.value)
                        break
                    yield Step(stage, i * steps + done, total)
        return results
    stop = threading.Event()
    lock = threading.Lock()
    count = [0]

    def work(make: WalkJob) -> torch.Tensor:
        with torch.no_grad():
            walking = make()
            before = 0
            while True:
                if stop.is_set():
                    raise InterruptedError("walk stopped")
                try:
                    done = next(walking)
                except StopIteration as result:
                    return result.value
                with lock:
                    count[0] += done - before
                before = done

    with helper_threads(min(threads, len(jobs)), "napari-irnet-walk") as pool:
        try:
            futures = [pool.submit(work, make) for make in jobs]
            shown = 0
            while True:
                _, pending = wait(futures, timeout=0.02, return_when=FIRST_EXCEPTION)
                if count[0] != shown:
                    shown = count[0]
                    yield Step(stage, shown, total)
                if not pending or any(f.done() and f.exception() is not None for f in futures):
                    break
            return [f.result() for f in futures]
        finally:
            stop.set()  # the walks stop at their next step; the pool then waits for them


def iter_transition(
    x: torch.Tensor,
    weights: torch.Tensor,
    steps: int = 256,
    radius: int = 5,
    *,
    method: str = "auto",
    channel_chunk: int | None = None,
    stage: str = "walk",
    threads: int | None = None,
) -> StepGenerator[torch.Tensor]:
    """:func:`apply_transition` as a generator: yields a :class:`~.progress.Step` as the steps advance.

    The channels are walked in chunks of ``channel_chunk`` (default: all at
    once). On the CPU, when every thread gets at least
    :data:`PARALLEL_MIN_VALUES` values, the stencil splits each chunk's rows
    over the threads and the gather walks one chunk per thread side by side
    (:func:`_walk_layout`). ``Step.total`` is ``steps`` times the number of
    chunks. Returns the walked ``(C, h, w)`` maps.
    """
    if x.dim() != 3 or x.shape[-2:] != weights.shape[-2:]:
        raise ValueError(f"x {tuple(x.shape)} and weights {tuple(weights.shape)} do not match")
    offsets = neighbour_offsets(radius)
    if weights.shape[0] != len(offsets):
        raise ValueError(f"weights have {weights.shape[0]} offsets, radius {radius} needs {len(offsets)}")
    if x.shape[0] == 0:
        return x.clone()
    method, chunk, band_threads, walk_threads = _walk_layout(x.shape[0], x[0].numel(), x.device, method, channel_chunk, threads)
    with torch.no_grad():
        weights = weights.to(dtype=x.dtype, device=x.device)
        walk = stencil_walker(weights, offsets, band_threads) if method == "stencil" else _WALKERS[method](weights, offsets)
    jobs = [lambda start=start: walk(x[start : start + chunk], steps) for start in range(0, x.shape[0], chunk)]
    outputs = yield from iter_walks(jobs, steps, stage, x.device, walk_threads)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


def _walk_layout(channels: int, cells: int, device: torch.device, method: str, channel_chunk: int | None, threads: int | None) -> tuple[str, int, int, int]:
    """How :func:`iter_transition` walks ``channels`` maps of ``cells`` cells.

    Returns ``(method, chunk, band threads, walk threads)``: the walker, the
    channels walked at once, the threads that share each walk's rows (the
    stencil) and the threads that walk chunks side by side (the gather).
    On the CPU the work is shared by ``threads`` (default: the torch thread
    count) when each thread gets :data:`PARALLEL_MIN_VALUES` values or more.
    """
    threads = max(1, torch.get_num_threads() if threads is None else int(threads))
    cpu = device.type == "cpu"
    chunk = min(channels, int(channel_chunk)) if channel_chunk else channels
    parts = threads if cpu and cells * chunk >= threads * PARALLEL_MIN_VALUES else 1
    method = _choose_method(method, device, math.ceil(chunk / parts))
    if method == "stencil":
        return method, chunk, parts, 1
    if not channel_chunk and cpu:
        chunk = math.ceil(channels / parts)
    return method, chunk, 1, threads


def apply_transition(
    x: torch.Tensor,
    weights: torch.Tensor,
    steps: int = 256,
    radius: int = 5,
    *,
    method: str = "auto",
    channel_chunk: int | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Compute ``x @ T^steps`` for maps ``x`` and stencil weights of ``T``.

    Parameters
    ----------
    x : torch.Tensor
        ``(C, h, w)`` maps (float32 or float64).
    weights : torch.Tensor
        ``(K, h, w)`` from :func:`transition_weights` with the same ``radius``.
    steps : int
        Number of steps ``t`` (any non-negative integer).
    radius : int
        Radius the weights were built with.
    method : {"auto", "stencil", "gather"}
        ``"stencil"``: ``K`` shifted multiply-adds over all channels per step,
        on any device; ``"gather"``: one fused weighted gather-sum
        (``embedding_bag``) per step; ``"auto"``: ``"gather"`` on CPU when a
        chunk has more than ``GATHER_MIN_CHANNELS`` channels, else
        ``"stencil"``.  Both give the same values up to rounding.
    channel_chunk : int, optional
        Walk at most this many channels at a time (bounds the working memory
        to ``O(K·N + 2·chunk·N)``).
    progress : callable, optional
        Called as ``progress(done, total)`` as the steps of every chunk advance
        (``total = steps · n_chunks``); it may raise to stop the walk.

    Returns
    -------
    torch.Tensor
        ``(C, h, w)`` in the dtype and device of ``x``.  Not differentiable.
    """
    steps_gen = iter_transition(x, weights, steps, radius, method=method, channel_chunk=channel_chunk)
    report = None if progress is None else (lambda step: progress(step.done, step.total))
    return run_steps(steps_gen, report)


def random_walk(
    x: torch.Tensor,
    boundary: torch.Tensor,
    beta: float = 10.0,
    steps: int = 256,
    radius: int = 5,
    **options,
) -> torch.Tensor:
    """The reference's ``propagate_to_edge`` without a dense matrix.

    Parameters
    ----------
    x : torch.Tensor
        ``(C, h, w)`` maps to propagate (e.g. class or instance CAMs on the
        stride-4 grid), float32 or float64.
    boundary : torch.Tensor
        ``(h, w)`` boundary probabilities in [0, 1].
    beta : float
        Exponent on the affinities.
    steps : int
        Number of walk steps (the reference uses ``2**8 = 256``).
    radius : int
        Neighbourhood radius (5 in the reference).
    **options
        ``method``, ``channel_chunk`` and ``progress`` of
        :func:`apply_transition`.

    Returns
    -------
    torch.Tensor
        ``(C, h, w)``: ``(x ⊙ (1 - boundary)) @ T^steps``, dtype and device of
        ``x``.
    """
    boundary = _check_boundary(boundary).to(dtype=x.dtype, device=x.device)
    if x.dim() != 3 or x.shape[-2:] != boundary.shape:
        raise ValueError(f"x must be (C, {boundary.shape[0]}, {boundary.shape[1]}), got {tuple(x.shape)}")
    weights = transition_weights(boundary, radius=radius, beta=beta)
    return apply_transition(x * (1.0 - boundary), weights, steps, radius, **options)


def random_walk_dense(
    x: torch.Tensor,
    boundary: torch.Tensor,
    beta: float = 10.0,
    steps: int = 256,
    radius: int = 5,
) -> torch.Tensor:
    """The reference's dense formulation, for tests and benchmarks only.

    Builds the padded dense affinity matrix like the reference (forward
    affinities on the boundary padded with 1.0 by ``radius`` on the left,
    right and bottom, their transposes, a unit diagonal), crops it to the
    image, takes ``T = A^β / colsum``, squares it ``log2(steps)`` times and
    returns ``(x ⊙ (1 - boundary)) @ T^steps``.  Memory ``O(N²)`` with
    ``N = h·w``; time ``O(N³ log steps)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(C, h, w)``.
    boundary : torch.Tensor
        ``(h, w)`` in [0, 1].
    beta, steps, radius
        As in :func:`random_walk`; ``steps`` must be a power of 2.

    Returns
    -------
    torch.Tensor
        ``(C, h, w)``.
    """
    exp_times = int(round(math.log2(steps))) if steps >= 1 else -1
    if exp_times < 0 or 2**exp_times != steps:
        raise ValueError(f"steps must be a power of 2, got {steps}")
    boundary = _check_boundary(boundary).to(dtype=x.dtype, device=x.device)
    channels, h, w = x.shape
    r = int(radius)
    hp, wp = h + r, w + 2 * r
    padded = F.pad(boundary[None], (r, r, 0, r), value=1.0)
    index = PathIndex(r, (hp, wp))
    affinity = boundary_to_affinity(padded, index)[0].reshape(-1)  # (D * n_src,)
    src = torch.as_tensor(index.src_indices, device=x.device).repeat(index.n_directions)
    dst = torch.as_tensor(index.dst_indices, device=x.device).reshape(-1)
    n_padded = hp * wp
    dense = torch.eye(n_padded, dtype=x.dtype, device=x.device)
    dense[src, dst] = affinity
    dense[dst, src] = affinity
    dense = dense.view(hp, wp, hp, wp)[:h, r : r + w, :h, r : r + w].reshape(h * w, h * w)
    powered = torch.pow(dense, beta)
    transition = powered / powered.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        transition = transition @ transition
    start = (x * (1.0 - boundary)).reshape(channels, h * w)
    return (start @ transition).reshape(channels, h, w)
