"""An exclusive lock on a file, held by one process at a time (POSIX ``flock``; no lock elsewhere)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..io.files import OutputError

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: type[Exception], what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed; it keeps the holder's process id).

    Raises ``busy(f"{what} (process <pid>); ...")`` when another process holds
    it, :class:`~napari_irnet.io.files.OutputError` when the file cannot be
    made. The lock goes with the process, so a killed run leaves none.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise busy(f"{what}{f' (process {other})' if other else ''}; wait for it or stop it") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
