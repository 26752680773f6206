"""Starting the panels' background workers so that closing the viewer never aborts Python.

A worker's Qt signals belong to its Python object. When a panel is closed
while a worker still runs (a checkpoint loading, a run, a fine-tuning), the
panel's reference to the worker goes away, and when Python exits while the
worker's thread still runs, Qt deletes those signals under it: the worker's
``finished`` then aborts the process. :func:`start_worker` keeps every
worker referenced until it has finished, and at exit asks the running ones
to stop (a generator worker stops at its next step) and waits for them
(at most :data:`EXIT_WAIT_MS`). The panels' callbacks check that the panel
is still open.
"""

from __future__ import annotations

import atexit

from napari.qt.threading import create_worker

#: how long Python's exit waits for workers still running (ms)
EXIT_WAIT_MS = 60_000

_running: set = set()


def start_worker(func, *args, **kwargs):
    """``napari.qt.threading.create_worker`` (started), kept alive until it finishes."""
    worker = create_worker(func, *args, **kwargs)
    _running.add(worker)
    worker.finished.connect(lambda w=worker: _running.discard(w))
    return worker


def stop_worker(worker) -> None:
    """Ask a worker to stop (a generator worker stops at its next step); one whose Qt side is gone is left alone."""
    if worker is None:
        return
    try:
        worker.quit()
    except RuntimeError:  # its Qt side is gone already
        pass


def running_workers() -> int:
    """How many workers started here have not finished."""
    return sum(1 for w in _running if _is_running(w))


def _is_running(worker) -> bool:
    try:
        return bool(worker.is_running)
    except RuntimeError:  # its Qt side is gone
        return False


@atexit.register  # registered after Qt's own exit handlers, so it runs before them
def _wait_for_workers() -> None:
    if not any(_is_running(w) for w in _running):
        return
    from qtpy.QtCore import QThreadPool

    for worker in list(_running):
        stop_worker(worker)
    QThreadPool.globalInstance().waitForDone(EXIT_WAIT_MS)
