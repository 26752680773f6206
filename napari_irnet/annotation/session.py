"""One image's annotation without Qt: its instances, their table, the annotator's background, undo.

An :class:`AnnotationSession` is what a person correcting one image works
on, and what the napari panel shows; scripts and tests drive it directly::

    session = AnnotationSession.from_prediction(prediction, model.classes, image_classes=["round"])
    session.delete([4])                       # the pixels of 4 become annotator background
    session.add_at((120, 64), outputs, params, "round")   # click to add a missed object
    session.merge([2, 7])
    session.undo()
    session.apply_proposal(new_labels, new_table)  # a re-run: corrections kept, ids kept
    session.accept()

It holds

- ``labels``: the instance map (H, W) int32, 0 background;
- ``table``: per instance id an :class:`~napari_irnet.annotation.masks.InstanceInfo`
  (class, score, state ``proposed`` / ``edited`` / ``accepted``);
  :meth:`records` adds bbox and area;
- ``background``: the *annotator background*, (H, W) bool, the pixels a
  person cleared (a deleted instance, an erased stroke). No re-run, slider
  change, reopen or project load fills them again, and fine-tuning takes
  them as true background;
- ``state``: the image's state (``proposed``, ``corrected``, ``accepted``);
- ``history``: undo and redo of every edit and every re-run.

The edit rules live here: a merge keeps the first instance's class and the
best score; split parts keep the class of the instance they came from;
every touched instance becomes ``edited`` (an accepted one stays
``accepted``); an instance painted with a new id gets :attr:`default_class`;
any edit makes the image ``corrected``. The label operations themselves are
the plain functions of :mod:`napari_irnet.annotation.edits`.

Listeners registered with :meth:`connect` are called with an
:class:`AnnotationChange` after every edit, undo, redo and re-run, so a GUI
only has to show what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .edits import EditError, delete, instance_gap, merge, merge_proposal, split_by_line, split_by_seeds
from .history import EditRecord, History, LabelDiff
from .masks import InstanceInfo, Masks, accept_all, instance_at, instance_ids, instance_records, next_free_id, set_class, table_from_records

__all__ = ["AnnotationChange", "AnnotationSession"]

#: image states an annotation session can be in
SESSION_STATES = ("proposed", "corrected", "accepted")


@dataclass
class AnnotationChange:
    """What one step changed, in the direction it was applied.

    ``labels`` is the pixel change (old -> new as applied; None when no
    pixel changed); ``record`` the history step (its ``before``/``after``
    may hold what the caller stored there, e.g. centroid points or
    parameters); ``action`` is ``"edit"``, ``"update"`` (a re-run),
    ``"undo"`` or ``"redo"``.
    """

    record: EditRecord
    labels: LabelDiff | None
    action: str

    @property
    def snapshot(self) -> dict[str, Any]:
        """The record's side of the step that is now in force."""
        return self.record.before if self.action == "undo" else self.record.after


class AnnotationSession:
    """One image's instances, their table, the annotator's background and the undo history.

    Parameters
    ----------
    labels : (H, W) int
        The instance map to start from (copied).
    table : {id: InstanceInfo}, optional
        Ids missing here count as edited instances of :attr:`default_class`.
    classes : sequence of str
        The image's classes (the first is the default class of new instances).
    state : str
        ``"proposed"``, ``"corrected"`` or ``"accepted"``.
    background : (H, W) bool, optional
        The annotator background (pixels of instances are never in it).
    history_limit : int
        Undo steps kept.
    """

    def __init__(
        self,
        labels: np.ndarray,
        table: Mapping[int, InstanceInfo] | None = None,
        classes: Sequence[str] = (),
        state: str = "proposed",
        background: np.ndarray | None = None,
        history_limit: int = 50,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be a 2D instance map, got shape {labels.shape}")
        if state not in SESSION_STATES:
            raise ValueError(f"state must be one of {SESSION_STATES}, got {state!r}")
        self.labels = np.array(labels, dtype=np.int32, order="C", copy=True)
        self.table: dict[int, InstanceInfo] = dict(table or {})
        self.classes = list(classes)
        self.default_class = self.classes[0] if self.classes else ""
        self.state = state
        self.background = np.zeros(self.labels.shape, bool)
        if background is not None:
            bg = np.asarray(background, bool)
            if bg.shape != self.labels.shape:
                raise ValueError(f"background {bg.shape} and instances {self.labels.shape} differ in shape")
            self.background[...] = bg & (self.labels == 0)
        self.history = History(limit=history_limit)
        #: the last proposal applied (labels, table), for :meth:`discard`
        self.proposal: tuple[np.ndarray, dict[int, InstanceInfo]] | None = None
        self._listeners: list[Callable[[AnnotationChange], None]] = []

    @classmethod
    def from_prediction(cls, prediction, model_classes: Sequence[str], image_classes: Sequence[str] = (), **kwargs) -> AnnotationSession:
        """A session on a pipeline result (every instance proposed)."""
        table = table_from_records(prediction.instances.records, model_classes)
        session = cls(prediction.instances.labels, table, classes=list(image_classes) or list(model_classes), **kwargs)
        session.proposal = (session.labels.copy(), dict(table))
        return session

    # ------------------------------------------------------------------ reading
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def instance_ids(self) -> list[int]:
        return [int(i) for i in instance_ids(self.labels)]

    def info(self, label: int) -> InstanceInfo:
        """The table entry of an instance (an id without one: edited, of the default class)."""
        return self.table.get(int(label), InstanceInfo(self.default_class, 1.0, "edited"))

    def protected_ids(self) -> list[int]:
        """Instances no re-run replaces: edited, accepted, or painted without a table entry."""
        return [i for i in self.instance_ids() if self.info(i).protected]

    def records(self) -> list[dict[str, Any]]:
        """:func:`instance_records` of the current instances."""
        return instance_records(self.labels, self.table, self.default_class)

    def counts(self) -> dict[str, int]:
        """Instances per state."""
        out = {"proposed": 0, "edited": 0, "accepted": 0}
        for i in self.instance_ids():
            out[self.info(i).state] += 1
        return out

    def instance_at(self, point: Sequence[float]) -> int:
        return instance_at(self.labels, point)

    def new_id(self) -> int:
        """The id a new instance gets."""
        return next_free_id(self.labels, self.table)

    def gap(self, ids: Sequence[int]) -> float:
        """How far apart the instances ``ids`` lie (0: they touch); see :func:`~napari_irnet.annotation.edits.instance_gap`."""
        return instance_gap(self.labels, ids)

    @property
    def has_corrections(self) -> bool:
        """Anything a person did: protected instances, annotator background, or a state past proposed."""
        return self.state != "proposed" or bool(self.protected_ids()) or bool(self.background.any())

    # ------------------------------------------------------------------ events
    def connect(self, callback: Callable[[AnnotationChange], None]) -> None:
        """Call ``callback(change)`` after every edit, re-run, undo and redo."""
        self._listeners.append(callback)

    def disconnect(self, callback: Callable[[AnnotationChange], None]) -> None:
        self._listeners = [c for c in self._listeners if c is not callback]

    def _emit(self, record: EditRecord, action: str) -> None:
        diff = record.diff
        if diff is not None and action == "undo":
            diff = diff.inverted()
        change = AnnotationChange(record, diff, action)
        for callback in list(self._listeners):
            callback(change)

    # ------------------------------------------------------------------ the mechanics of one step
    def _apply(self, record: EditRecord, reverse: bool) -> None:
        if record.diff is not None:
            record.diff.apply(self.labels, reverse=reverse)
        if record.background is not None:
            flags = self.background.view(np.uint8)
            record.background.apply(flags, reverse=reverse)
        snap = record.before if reverse else record.after
        if "table" in snap:
            self.table = dict(snap["table"])
        if "state" in snap:
            self.state = snap["state"]

    def _background_diff(self, cleared: np.ndarray | None, filled: np.ndarray | None) -> LabelDiff | None:
        """The change of the annotator-background flags: ``cleared`` flat pixels join it, ``filled`` ones leave it."""
        flags = self.background.view(np.uint8)
        parts = []
        if filled is not None and filled.size:
            parts.append(LabelDiff.assign(flags, filled, 0))
        if cleared is not None and cleared.size:
            parts.append(LabelDiff.assign(flags, cleared, 1))
        diff = None
        for part in parts:
            diff = part if diff is None else diff.then(part)
        return diff if diff else None

    def step(
        self,
        name: str,
        diff: LabelDiff | None,
        table: Mapping[int, InstanceInfo] | None = None,
        state: str | None = None,
        *,
        kind: str = "edit",
        cleared: np.ndarray | None = None,
        freed: np.ndarray | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> EditRecord:
        """Apply one undoable step and tell the listeners.

        ``diff`` changes pixels (pixels given an id leave the annotator
        background); ``cleared`` (flat indices) join the annotator background,
        ``freed`` ones leave it;
        ``table`` and ``state`` replace the current ones (default: unchanged,
        and an ``edit`` makes the image ``corrected``); ``before`` / ``after``
        are stored with the step for the caller (e.g. centroid points).
        """
        diff = diff if diff else None
        filled = diff.index[diff.new != 0] if diff is not None else np.zeros(0, np.int64)
        if freed is not None:
            filled = np.union1d(filled, freed)
        new_state = state or ("corrected" if kind == "edit" else self.state)
        record = EditRecord(
            name,
            diff,
            {"table": self.table, "state": self.state, **(before or {})},
            {"table": dict(self.table if table is None else table), "state": new_state, **(after or {})},
            kind,
            self._background_diff(cleared, filled),
        )
        self._apply(record, reverse=False)
        self.history.push(record)
        self._emit(record, kind)
        return record

    def undo(self) -> EditRecord | None:
        """Undo the last step (None when there is none)."""
        record = self.history.undo()
        if record is not None:
            self._apply(record, reverse=True)
            self._emit(record, "undo")
        return record

    def redo(self) -> EditRecord | None:
        """Redo the last undone step (None when there is none)."""
        record = self.history.redo()
        if record is not None:
            self._apply(record, reverse=False)
            self._emit(record, "redo")
        return record

    # ------------------------------------------------------------------ edits
    def _present(self, ids: Iterable[int], what: str) -> list[int]:
        ids = list(dict.fromkeys(int(i) for i in ids))
        if not ids:
            raise EditError(f"pick the instances to {what}")
        return ids

    def merge(self, ids: Sequence[int]) -> EditRecord:
        """Merge the instances ``ids`` into the first: its class, the best score, edited."""
        ids = self._present(ids, "merge")
        if len(ids) < 2:
            raise EditError("pick two instances to merge")
        diff = merge(self.labels, ids)
        infos = [self.info(i) for i in ids]
        table = {k: v for k, v in self.table.items() if k not in ids[1:]}
        state = "accepted" if infos[0].state == "accepted" else "edited"
        table[ids[0]] = InstanceInfo(infos[0].class_name, max(i.score for i in infos), state)
        return self.step(f"merge {ids}", diff, table)

    def split(
        self, line: np.ndarray | None = None, seeds: np.ndarray | None = None, image: np.ndarray | None = None
    ) -> tuple[EditRecord, list[int]]:
        """Split along a polyline (y, x), or between seeds inside one instance (watershed; ``image`` guides it).

        The parts keep the class and score of the instance and become edited.
        Returns the step and the ids of the new parts.
        """
        if (line is None) == (seeds is None):
            raise EditError("split needs either a line or seeds")
        new_id = self.new_id()
        if line is not None:
            diff, new_ids = split_by_line(self.labels, line, new_id=new_id)
        else:
            diff, new_ids = split_by_seeds(self.labels, seeds, new_id=new_id, image=image)
        old_ids = [int(i) for i in np.unique(diff.old) if i]
        base = self.info(old_ids[0]) if old_ids else InstanceInfo(self.default_class)
        table = dict(self.table)
        state = "accepted" if base.state == "accepted" else "edited"
        for i in old_ids + list(new_ids):
            table[i] = InstanceInfo(base.class_name, base.score, state)
        return self.step(f"split {old_ids} -> {old_ids + list(new_ids)}", diff, table), list(new_ids)

    def delete(self, ids: Sequence[int]) -> EditRecord:
        """Delete instances: their pixels become annotator background (no re-run brings them back)."""
        ids = self._present(ids, "delete")
        diff = delete(self.labels, ids)
        table = {k: v for k, v in self.table.items() if k not in ids}
        return self.step(f"delete {ids}", diff, table, cleared=diff.index)

    def set_class(self, ids: Sequence[int], class_name: str) -> EditRecord:
        """Give instances another class (they become edited; accepted ones stay accepted)."""
        ids = self._present(ids, "change the class of")
        if not class_name:
            raise EditError("choose a class first")
        missing = [i for i in ids if not np.any(self.labels == i)]
        if missing:
            raise EditError(f"no instance with id {missing[0]} in the map")
        return self.step(f"class of {ids} -> {class_name}", None, set_class(self.table, ids, class_name))

    def accept(self) -> EditRecord:
        """Accept the image: every instance accepted (new ids get the default class)."""
        return self.step("accept image", None, accept_all(self.labels, self.table, self.default_class), "accepted")

    def paint(self, mask: np.ndarray, label: int | None = None, class_name: str | None = None) -> int:
        """Paint ``mask`` with instance ``label`` (default: a new id of ``class_name``); returns the id.

        Overwrites whatever is under the mask, as a brush does; the instances
        touched become edited.
        """
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape or not mask.any():
            raise EditError("nothing to paint")
        label = self.new_id() if label is None else int(label)
        new = self.labels.copy()
        new[mask] = label
        table = dict(self.table)
        if label not in table or class_name:
            table[label] = InstanceInfo(class_name or self.info(label).class_name, 1.0, "edited")
        self.record_paint(LabelDiff.between(self.labels, new), table=table, name="paint")
        return label

    def erase(self, mask: np.ndarray) -> EditRecord | None:
        """Erase ``mask`` (the pixels become annotator background)."""
        mask = np.asarray(mask, bool)
        new = np.where(mask, 0, self.labels)
        return self.record_paint(LabelDiff.between(self.labels, new), name="erase")

    def record_paint(self, diff: LabelDiff, table: Mapping[int, InstanceInfo] | None = None, name: str = "paint") -> EditRecord | None:
        """A brush, fill or eraser change (done elsewhere, e.g. in a napari layer) as one step.

        The touched instances become edited (new ids get the default class);
        erased pixels join the annotator background. None when nothing changed.
        """
        if not diff:
            return None
        table = dict(self.table if table is None else table)
        for i in diff.ids():
            i = int(i)
            info = table.get(i)
            if info is None:
                table[i] = InstanceInfo(self.default_class, 1.0, "edited")
            elif info.state == "proposed":
                table[i] = replace(info, state="edited")
        erased = diff.index[(diff.new == 0) & (diff.old != 0)]
        return self.step(name, diff, table, cleared=erased)

    def replace(self, labels: np.ndarray, classes: Mapping[int, str] | None = None, name: str = "replace instances") -> EditRecord:
        """Replace every instance with a given map (all edited; ``classes`` maps ids to class names)."""
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise EditError(f"the map is {labels.shape}, the image {self.shape}")
        classes = classes or {}
        table = {int(i): InstanceInfo(classes.get(int(i), self.default_class), 1.0, "edited") for i in np.unique(labels) if i}
        freed = np.flatnonzero(self.background)
        return self.step(name, LabelDiff.between(self.labels, labels.astype(np.int32)), table, freed=freed)

    def add_at(
        self,
        point: Sequence[float],
        outputs,
        params,
        class_name: str | None = None,
        model_classes: Sequence[str] | None = None,
    ) -> int:
        """Click to add: a new instance under ``point`` (y, x) from the cached network outputs.

        ``outputs`` are the image's :class:`~napari_irnet.pipeline.inference.NetworkOutputs`;
        ``model_classes`` the model's class list (to find the class's CAM;
        default :attr:`classes`). The mask (:func:`~napari_irnet.annotation.click_add.instance_from_click`)
        takes background only: never an instance, and annotator background
        only when the click lies in it. Returns the new id.
        """
        from .click_add import instance_from_click

        class_name = class_name or self.default_class
        names = list(model_classes) if model_classes is not None else self.classes
        class_id = names.index(class_name) if class_name in names else None
        y, x = (int(round(float(v))) for v in point[-2:])
        inside = 0 <= y < self.shape[0] and 0 <= x < self.shape[1]
        blocked = None if inside and self.background[y, x] else self.background
        mask = instance_from_click(outputs, (y, x), self.labels, class_id, params, blocked=blocked)
        label = self.new_id()
        table = {**self.table, label: InstanceInfo(class_name, 1.0, "edited")}
        diff = LabelDiff.assign(self.labels, np.flatnonzero(mask), label)
        self.step(f"add {label} ({class_name})", diff, table)
        return label

    def discard(self) -> EditRecord:
        """Go back to the last proposal: every correction and the annotator background dropped."""
        if self.proposal is None:
            raise EditError("there is no proposal to go back to")
        labels, table = self.proposal
        freed = np.flatnonzero(self.background)
        return self.step("discard corrections", LabelDiff.between(self.labels, labels), table, "proposed", freed=freed)

    def apply_proposal(
        self,
        labels: np.ndarray,
        table: Mapping[int, InstanceInfo],
        name: str = "re-run",
        kind: str = "update",
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> EditRecord | None:
        """A new pipeline result: edited and accepted instances and the annotator background kept, ids of unedited ones kept.

        An accepted image keeps its instances as they are (returns None).
        """
        self.proposal = (np.asarray(labels, dtype=np.int32).copy(), dict(table))
        if self.state == "accepted":
            return None
        merged, merged_table = merge_proposal(labels, table, self.labels, {i: self.info(i) for i in self.instance_ids()}, self.background)
        return self.step(name, LabelDiff.between(self.labels, merged), merged_table, self.state, kind=kind, before=before, after=after)

    # ------------------------------------------------------------------ storage
    def to_masks(self, **meta) -> Masks:
        """The session as :class:`~napari_irnet.annotation.masks.Masks`, for a store (``meta``: image_name, fingerprint, ...)."""
        table = {i: self.info(i) for i in self.instance_ids()}
        meta.setdefault("classes", self.classes)
        bg = self.background.copy() if self.background.any() else None
        return Masks.from_table(self.labels.copy(), table, state=self.state, background=bg, **meta)

    def restore(self, masks: Masks) -> None:
        """Start from stored masks: an accepted image as stored, else the current proposal merged with them.

        Not an undoable step (the history starts afresh).
        """
        labels = np.asarray(masks.labels)
        if labels.shape != self.shape:
            raise ValueError(f"stored corrections are {labels.shape}, the image {self.shape}")
        background = masks.background if masks.background is not None else np.zeros(self.shape, bool)
        stored = masks.table
        if masks.state == "accepted" or self.proposal is None:
            self.labels[...] = labels
            self.table = stored
        else:
            merged, table = merge_proposal(self.proposal[0], self.proposal[1], labels, stored, background)
            self.labels[...] = merged
            self.table = table
        self.background[...] = np.asarray(background, bool) & (self.labels == 0)
        self.state = masks.state if masks.state in SESSION_STATES else "corrected"
        self.history.clear()
