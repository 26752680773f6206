"""Undo and redo: the pixels an edit changes (:class:`LabelDiff`), one step (:class:`EditRecord`), the stacks (:class:`History`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "EditRecord",
    "History",
    "LabelDiff",
]


@dataclass
class LabelDiff:
    """The pixels an edit changes: flat indices with their old and new values.

    ``index`` is sorted and unique; ``old[i] != new[i]`` for every entry.
    """

    shape: tuple[int, ...]
    index: np.ndarray
    old: np.ndarray
    new: np.ndarray

    @classmethod
    def empty(cls, shape: Sequence[int]) -> LabelDiff:
        z = np.zeros(0, np.int64)
        return cls(tuple(shape), z, z.copy(), z.copy())

    @classmethod
    def between(cls, before: np.ndarray, after: np.ndarray) -> LabelDiff:
        """The difference from ``before`` to ``after`` (same shape)."""
        if before.shape != after.shape:
            raise ValueError(f"shapes differ: {before.shape} and {after.shape}")
        b, a = before.ravel(), after.ravel()
        idx = np.flatnonzero(b != a)
        return cls(tuple(before.shape), idx, b[idx].astype(np.int64), a[idx].astype(np.int64))

    @classmethod
    def assign(cls, labels: np.ndarray, index: np.ndarray, value: int | np.ndarray) -> LabelDiff:
        """The diff that sets flat ``index`` of ``labels`` to ``value`` (unchanged pixels dropped)."""
        index = np.asarray(index, dtype=np.int64).ravel()
        new = np.broadcast_to(np.asarray(value, dtype=np.int64), index.shape)
        order = np.argsort(index, kind="stable")
        index, new = index[order], new[order]
        old = labels.ravel()[index].astype(np.int64)
        keep = old != new
        return cls(tuple(labels.shape), index[keep], old[keep], np.array(new[keep]))

    def __len__(self) -> int:
        return int(self.index.size)

    def __bool__(self) -> bool:
        return self.index.size > 0

    def indices(self) -> tuple[np.ndarray, ...]:
        """The changed pixels as a tuple of index arrays (numpy fancy indexing)."""
        return np.unravel_index(self.index, self.shape)

    def inverted(self) -> LabelDiff:
        return LabelDiff(self.shape, self.index, self.new, self.old)

    def apply(self, labels: np.ndarray, reverse: bool = False) -> np.ndarray:
        """Write the new (``reverse``: old) values into ``labels`` in place; returns ``labels``."""
        if labels.shape != self.shape:
            raise ValueError(f"diff for shape {self.shape} applied to shape {labels.shape}")
        flat = labels.reshape(-1)
        if not np.shares_memory(flat, labels):
            raise ValueError("labels must be contiguous to be edited in place")
        flat[self.index] = self.old if reverse else self.new
        return labels

    def then(self, later: LabelDiff) -> LabelDiff:
        """The single diff doing ``self`` and then ``later``."""
        if later.shape != self.shape:
            raise ValueError("diffs of different shapes")
        index = np.union1d(self.index, later.index)
        old = np.empty(index.size, np.int64)
        new = np.empty(index.size, np.int64)
        in_first = np.isin(index, self.index, assume_unique=True)
        in_later = np.isin(index, later.index, assume_unique=True)
        old[in_first] = self.old[np.searchsorted(self.index, index[in_first])]
        only_later = ~in_first
        old[only_later] = later.old[np.searchsorted(later.index, index[only_later])]
        new[in_later] = later.new[np.searchsorted(later.index, index[in_later])]
        only_first = ~in_later
        new[only_first] = self.new[np.searchsorted(self.index, index[only_first])]
        keep = old != new
        return LabelDiff(self.shape, index[keep], old[keep], new[keep])

    def ids(self) -> np.ndarray:
        """Every non-zero id the diff touches (old or new)."""
        ids = np.union1d(self.old, self.new)
        return ids[ids != 0]


@dataclass
class EditRecord:
    """One undoable step: a label diff plus snapshots of anything else it changed.

    ``before`` and ``after`` hold whatever the caller needs to restore
    (instance table, centroid points, parameters, image state); keys present
    in one are present in the other. ``kind`` is ``"edit"`` for a person's
    edit and ``"update"`` for a re-run of the pipeline; consecutive updates
    are merged into one step (:meth:`History.push`).
    """

    name: str
    diff: LabelDiff | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    kind: str = "edit"
    #: the pixels whose annotator-background flag the step changes (values 0/1)
    background: LabelDiff | None = None


def _then(first: LabelDiff | None, later: LabelDiff | None) -> LabelDiff | None:
    if first is None or later is None:
        return later if first is None else first
    return first.then(later)


class History:
    """Undo and redo stacks of :class:`EditRecord` with a size limit."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = int(limit)
        self._undo: list[EditRecord] = []
        self._redo: list[EditRecord] = []

    def push(self, record: EditRecord, coalesce: bool = True) -> None:
        """Add a step (clears redo). An ``update`` on top of an ``update`` merges with it."""
        self._redo.clear()
        top = self._undo[-1] if self._undo else None
        if coalesce and top is not None and record.kind == "update" and top.kind == "update":
            diff = _then(top.diff, record.diff)
            before = {**record.before, **top.before}
            after = {**top.after, **record.after}
            bg = _then(top.background, record.background)
            self._undo[-1] = EditRecord(record.name, diff, before, after, "update", bg)
            return
        self._undo.append(record)
        del self._undo[: max(0, len(self._undo) - self.limit)]

    def undo(self) -> EditRecord | None:
        """The step to revert (moved to the redo stack), or None."""
        if not self._undo:
            return None
        record = self._undo.pop()
        self._redo.append(record)
        return record

    def redo(self) -> EditRecord | None:
        """The step to do again (moved back to the undo stack), or None."""
        if not self._redo:
            return None
        record = self._redo.pop()
        self._undo.append(record)
        return record

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def names(self) -> list[str]:
        """Names of the undoable steps, oldest first."""
        return [r.name for r in self._undo]
