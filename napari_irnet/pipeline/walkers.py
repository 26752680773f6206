"""The two ways of walking maps over a stencil of transition weights.

A walker is a generator function ``walk(x, steps)`` over ``(C, h, w)`` maps:
it yields the number of steps done (after every step, or every few) and
returns the walked maps. :func:`stencil_walker` applies the ``K`` shifted
multiply-adds of every step over all channels (any device; best for few
channels), its step loop compiled with TorchScript and its rows optionally
shared by threads; :func:`gather_walker` does every step as one weighted
neighbour sum (``embedding_bag``; best on the CPU for many channels).
:mod:`napari_irnet.pipeline.random_walk` chooses between them and builds
the weights.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Generator

import numpy as np
import torch
import torch.nn.functional as F

from .threads import helper_threads

__all__ = ["STENCIL_BAND_VALUES", "STENCIL_CALL_VALUES", "Walker", "gather_walker", "stencil_walker"]

#: walk(x (C, h, w), steps): a generator that yields the steps done so far (after every step or
#: every few) and returns (C, h, w)
Walker = Callable[[torch.Tensor, int], Generator[int, None, torch.Tensor]]

#: the stencil walker updates row bands of about this many values (channels × cells) at a
#: time, so that one band's source, weights and result stay in the processor's cache through
#: its ``K`` multiply-adds (on the 2-core CPU: about 2x faster than whole grids of 1024²)
STENCIL_BAND_VALUES = 1 << 16
#: the stencil walker runs as many steps per call of its loop as update about this many values
#: (at least one step): between calls it reports progress and can be stopped
STENCIL_CALL_VALUES = 1 << 20


def _stencil_steps(
    sources: list[list[list[torch.Tensor]]],
    results: list[list[torch.Tensor]],
    weights: list[list[torch.Tensor]],
    first: int,
    count: int,
) -> None:
    """Steps ``first`` to ``first + count - 1`` of a banded stencil walk, in place.

    Two buffers alternate: step ``s`` reads buffer ``s % 2`` and writes the
    other. ``sources[i][band][k]`` is buffer ``i`` seen at offset ``k`` of the
    band's cells, ``results[i][band]`` the band's cells of buffer ``i``, and
    ``weights[band][k]`` the band's weights of offset ``k``.
    """
    for step in range(first, first + count):
        read = step % 2
        for band in range(len(weights)):
            src = sources[read][band]
            dst = results[1 - read][band]
            w = weights[band]
            torch.mul(src[0], w[0], out=dst)
            for k in range(1, len(w)):
                dst.addcmul_(src[k], w[k])


#: walks in several threads start at once: one of them compiles, the others wait for it
_COMPILING = threading.Lock()


def _compiled_stencil_steps() -> Callable[..., None]:
    """:func:`_compile_stencil_steps` once per process, whichever thread asks first."""
    with _COMPILING:
        return _compile_stencil_steps()


@functools.cache
def _compile_stencil_steps() -> Callable[..., None]:
    """:func:`_stencil_steps` compiled by TorchScript, or the Python function where that fails.

    A compiled call runs the loop's many small operations without holding
    Python's global interpreter lock. Walks in Python threads
    (:func:`~napari_irnet.pipeline.random_walk.iter_walks`) then no longer queue for the lock between
    operations: two threads walking 130² canvases took 0.25 s as a Python
    loop and 0.074 s compiled (2-core CPU; one thread: 0.09 and 0.07 s).
    TorchScript reads the function's source file; where it cannot (no
    sources shipped, a torch without TorchScript) the same loop runs in
    Python, with the same sums.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.10 and later call TorchScript deprecated
            return torch.jit.script(_stencil_steps)
    except Exception:  # noqa: BLE001 - whatever the reason, the Python loop does the same
        return _stencil_steps


def _without_grad(fn: Callable[..., None], *args) -> None:
    """``fn(*args)`` without autograd (a helper thread does not share its caller's grad mode)."""
    with torch.no_grad():
        fn(*args)


def _row_groups(bands: int, threads: int) -> list[list[int]]:
    """Bands ``0 .. bands - 1`` cut into up to ``threads`` runs of about equal length."""
    parts = max(1, min(int(threads), bands))
    edges = [bands * i // parts for i in range(parts + 1)]
    return [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:])]


def stencil_walker(weights: torch.Tensor, offsets: np.ndarray, threads: int = 1) -> Walker:
    """Walker applying ``K`` shifted multiply-adds over all channels per step.

    Two zero-bordered ``(C, h + 2p, w + 2p)`` buffers are used alternately;
    each step writes the interior of one from shifted views of the other, so
    the loop allocates nothing. On the CPU the rows are updated in bands of
    about :data:`STENCIL_BAND_VALUES` values (the same sums, in cache); on
    other devices the whole grid at once. The steps run in calls of
    :func:`_compiled_stencil_steps` of about :data:`STENCIL_CALL_VALUES`
    values each; the walker yields after every call.

    With ``threads`` > 1 (CPU) the bands are split into as many groups of
    rows, updated side by side in that many threads, which wait for each
    other at the end of every step (a step reads the rows around each band
    from the one before): any number of channels keeps every thread busy.
    """
    per_offset = weights[:, None]  # (K, 1, h, w): broadcast over channels
    pad = int(np.abs(offsets).max())
    _, h, w = weights.shape
    shifts = offsets.tolist()

    def walk(x: torch.Tensor, steps: int) -> Generator[int, None, torch.Tensor]:
        buffers = [x.new_zeros(x.shape[0], h + 2 * pad, w + 2 * pad) for _ in range(2)]
        # on the CPU: bands in cache, at least one per thread
        rows = h if x.device.type != "cpu" else max(1, min(STENCIL_BAND_VALUES // max(1, x.shape[0] * w), -(-h // threads)))
        sources: list[list[list[torch.Tensor]]] = [[], []]
        results: list[list[torch.Tensor]] = [[], []]
        band_weights = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            band_weights.append([per_offset[k, :, r0:r1] for k in range(len(shifts))])
            for b, buffer in enumerate(buffers):
                sources[b].append([buffer[:, pad + dy + r0 : pad + dy + r1, pad + dx : pad + dx + w] for dy, dx in shifts])
                results[b].append(buffer[:, pad + r0 : pad + r1, pad : pad + w])
        buffers[0][:, pad : pad + h, pad : pad + w].copy_(x)
        per_call = max(1, STENCIL_CALL_VALUES // max(1, x.numel()))
        run = _compiled_stencil_steps()
        groups = _row_groups(len(band_weights), threads if x.device.type == "cpu" else 1)
        parts = [([[sources[b][i] for i in g] for b in range(2)], [[results[b][i] for i in g] for b in range(2)], [band_weights[i] for i in g]) for g in groups]
        with helper_threads(len(parts) - 1, "napari-irnet-walk") if len(parts) > 1 else contextlib.nullcontext() as pool:
            done = 0
            while done < steps:
                count = min(per_call, steps - done)
                if pool is None:
                    run(*parts[0], done, count)
                else:
                    for step in range(done, done + count):  # every thread's rows of one step, then the next step
                        others = [pool.submit(_without_grad, run, *part, step, 1) for part in parts[1:]]
                        run(*parts[0], step, 1)
                        for other in others:
                            other.result()
                done += count
                yield done
        return buffers[steps % 2][:, pad : pad + h, pad : pad + w].clone()

    return walk


def _neighbour_table(weights: torch.Tensor, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``p`` of ``Tᵀ`` as a fixed-size neighbour list.

    Returns
    -------
    index : torch.Tensor
        ``(N, K)`` flat index of neighbour ``p + o_k`` (int32 where ``N·K``
        allows, else int64); neighbours outside the image point at ``p``.
    weight : torch.Tensor
        ``(N, K)`` ``T[p + o_k, p]``, 0 for neighbours outside the image.
    """
    n_offsets, h, w = weights.shape
    dev = weights.device
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    oy = torch.as_tensor(offsets[:, 0], device=dev).view(-1, 1, 1)
    ox = torch.as_tensor(offsets[:, 1], device=dev).view(-1, 1, 1)
    inside = (ys + oy >= 0) & (ys + oy < h) & (xs + ox >= 0) & (xs + ox < w)
    index = torch.where(inside, (ys + oy) * w + (xs + ox), ys * w + xs)
    weight = torch.where(inside, weights, torch.zeros((), dtype=weights.dtype, device=dev))
    index_dtype = torch.int32 if h * w * n_offsets < 2**31 else torch.int64
    index = index.permute(1, 2, 0).reshape(h * w, n_offsets).to(index_dtype).contiguous()
    return index, weight.permute(1, 2, 0).reshape(h * w, n_offsets).contiguous()


def gather_walker(weights: torch.Tensor, offsets: np.ndarray) -> Walker:
    """Walker computing ``xᵀ ← Tᵀ·xᵀ`` as one weighted neighbour sum per step.

    ``xᵀ`` is kept as ``(N, C)`` and every step is one
    ``embedding_bag(mode="sum", per_sample_weights=...)``: for each pixel the
    ``K`` neighbour rows are gathered, scaled and summed in a single fused
    kernel (fbgemm on x86 CPUs).  With more than a few channels this beats
    ``K`` full-array multiply-adds, whose cost is memory traffic.
    """
    index, weight = _neighbour_table(weights, offsets)
    _, h, w = weights.shape

    def walk(x: torch.Tensor, steps: int) -> Generator[int, None, torch.Tensor]:
        state = x.reshape(x.shape[0], h * w).t().contiguous()
        for step in range(steps):
            state = F.embedding_bag(index, state, per_sample_weights=weight, mode="sum")
            yield step + 1
        return state.t().reshape(x.shape).contiguous()

    return walk
