"""Errors that name the file, atomic writes, JSON.

Everything a user points the tool at is checked where it is read (:mod:`~napari_irnet.io.images`,
:mod:`~napari_irnet.io.labels`, :mod:`~napari_irnet.io.results`); anything wrong becomes an
:class:`InputError` whose message names the file and the problem, so the command line can print
it and the viewer can show it without crashing. Everything written goes through
:func:`atomic_path`: a temporary file in the target's folder, flushed to disk and renamed over
the target only once it is complete, so an interrupted or failed write never leaves a
half-written file behind.

Importing this module never imports napari or Qt.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_NAMES_SHOWN",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "describe_error",
    "existing_file",
    "InputError",
    "json_ready",
    "name_list",
    "read_json",
    "OutputError",
    "write_json",
]


#: how many names an error or warning lists before it says "and N more"
MAX_NAMES_SHOWN = 10


class InputError(ValueError):
    """A file given by the user cannot be used; the message names the file and why."""


class OutputError(OSError):
    """A result could not be written; the message names the file and why.

    ``filename`` holds the target path and ``errno`` the underlying error
    number when there was one.
    """

    def __str__(self) -> str:
        # OSError would print "[Errno N] strerror: filename" once errno is set
        return str(self.args[0]) if self.args else super().__str__()


def describe_error(exc: BaseException) -> str:
    """One line describing an exception raised by a library."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def name_list(names: Sequence[str], limit: int = MAX_NAMES_SHOWN) -> str:
    """``'a, b, c'`` or ``'a, b, ... and 12 more'`` for long lists."""
    shown = ", ".join(str(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... and {len(names) - limit} more"
    return shown


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} not found (no such file)")
    if not p.is_file():
        raise InputError(f"{p}: {what} is not a file")
    return p


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or describe_error(exc)
    err = OutputError(f"{path}: cannot write ({reason})")
    err.filename = str(path)
    err.errno = exc.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file all at once: yield a temporary path, rename it over ``path``.

    The temporary file is in the target's folder (so the rename is atomic)
    and is hidden, named ``.<name>.<random>.tmp<suffix>`` so writers that
    choose a format by suffix still work. It is not created in advance: the
    body writes it. On success it is flushed to disk and renamed over
    ``path``; on any exception it is deleted and ``path`` is left as it was.
    Missing parent folders are created.

    Parameters
    ----------
    path
        The final file.

    Yields
    ------
    pathlib.Path
        Where the body must write.

    Raises
    ------
    OutputError
        Any OSError while creating the folder, writing, or renaming (read-only
        folder, disk full, ...), with the target named. Other exceptions from
        the body pass through unchanged.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # some part of the folder path is a file
        blocker = exc.filename or target.parent
        err = OutputError(f"{target}: cannot write ({blocker} is not a folder)")
        err.filename, err.errno = str(target), exc.errno
        raise err from exc
    except OSError as exc:
        raise _output_error(target, exc) from exc
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"{target}: cannot write (the writer produced no file)")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(target, exc) from exc
        raise
    _sync_folder(target.parent)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`OutputError` unless a file can be written at ``path`` now.

    For long work (training): a folder given as the file, a part of the
    folder path that is a file, a read-only folder or file system fail here,
    before the work starts, rather than after it. A probe file is created and
    removed in the nearest existing folder; nothing else is created.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give a file name (e.g. {target / 'model.pt'})")
    if target.exists() and not target.is_file():
        raise OutputError(f"{target}: exists and is not a regular file")
    folder = target.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        err = OutputError(f"{target}: cannot write ({folder} is not a folder)")
        err.filename = str(target)
        raise err
    probe = folder / f".{target.name}.{secrets.token_hex(4)}.probe"
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise _output_error(target, exc) from exc
    return target


def _sync_folder(folder: Path) -> None:
    """Make a rename durable where the platform allows it (best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` and move the result to ``path`` (see :func:`atomic_path`).

    Parameters
    ----------
    path
        The final file.
    writer
        Writes the complete file at the path it is given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON data: dict keys as str, numpy scalars and arrays
    as plain numbers and lists, tuples as lists, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as strict JSON (no NaN), atomically (see :func:`atomic_path`).

    Raises
    ------
    ValueError
        ``data`` holds a non-finite float (pass it through :func:`json_ready` first).
    OutputError
        The file could not be written.
    """
    text = json.dumps(data, indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception] = InputError,
              invalid: str = "malformed JSON at line {line}, column {column}: {msg}") -> Any:  # fmt: skip
    """The data of the JSON file ``path``, or ``error`` naming the file: missing, unreadable or not JSON.

    ``what`` says what the file is (``"class legend"``); ``invalid`` words
    the last case, with ``{what}``, ``{line}``, ``{column}`` and ``{msg}``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read {what} ({describe_error(exc)})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{p}: " + invalid.format(what=what, line=exc.lineno, column=exc.colno, msg=exc.msg)) from exc

