"""Helper threads for the CPU stages, each running torch on one OpenMP thread.

The stages share the CPU's cores by running independent pieces of work (walk
canvases, groups of rows, image squares, chunks of pixels) side by side in
Python threads; torch and NumPy release Python's lock inside their
operations. Each helper thread runs torch on one OpenMP thread, so that the
helpers do not start OpenMP teams of their own on cores that are already
busy.

PyTorch keeps one process-wide thread count that every thread starting torch
work for the first time takes as its own: ``torch.set_num_threads(1)`` in a
helper thread would leave every thread started afterwards (the plugin's next
worker thread, for one) on a single core. :func:`helper_threads` therefore
sets the caller's count again when its pool is done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["helper_threads", "side_by_side"]


@contextlib.contextmanager
def helper_threads(count: int, name: str = "napari-irnet") -> Iterator[ThreadPoolExecutor]:
    """A pool of ``count`` threads named ``name-N``, each with one torch thread.

    On exit the pool is shut down (queued work cancelled, running work
    waited for) and the calling thread's torch thread count is set again.
    """
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(max(1, int(count)), thread_name_prefix=name, initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


def side_by_side(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``fn`` of every item, in order, computed in up to ``torch.get_num_threads()`` threads.

    For work that releases Python's lock (torch, NumPy, scikit-image):
    independent pieces run on every core, with the results of running them
    one by one.
    """
    threads = min(len(items), max(1, torch.get_num_threads()))
    if threads <= 1:
        yield from map(fn, items)
        return
    with helper_threads(threads) as pool:
        yield from pool.map(fn, items)
