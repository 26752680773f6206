"""One image's instances: the instance table, the records, and the one masks type.

- An *instance map* (``labels``) is an ``(H, W)`` integer array: 0
  background, k > 0 the pixels of instance k.
- The *instance table* maps each id to an :class:`InstanceInfo` (class name,
  score, state). Instance states: ``"proposed"`` (made by the pipeline),
  ``"edited"`` (touched by a person), ``"accepted"`` (confirmed by a person);
  edited and accepted instances are *protected* from re-runs.
- A *record* is one instance as the files keep it: ``id``, ``class``,
  ``score``, ``state``, ``bbox`` ``[x0, y0, x1, y1]`` (exclusive ends) and
  ``area``; :func:`instance_records` computes them, the only place that does.
- :class:`Masks` is an image's instance map with its records, annotator
  background and state: what an annotation session hands to a store, what a
  per-image folder and a project give back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_STATES",
    "Masks",
    "instance_boxes",
    "INSTANCE_STATES",
    "PROTECTED_STATES",
    "accept_all",
    "features_table",
    "instance_at",
    "instance_ids",
    "instance_records",
    "InstanceInfo",
    "next_free_id",
    "set_class",
    "set_state",
    "table_from_records",
]


#: states of one instance, in the order of a person's involvement
INSTANCE_STATES = ("proposed", "edited", "accepted")


#: states of one image, in the order of the work on it
IMAGE_STATES = ("new", "proposed", "corrected", "accepted")
#: states a re-run of the pipeline must not overwrite
PROTECTED_STATES = frozenset({"edited", "accepted"})


@dataclass(frozen=True)
class InstanceInfo:
    """What is known about one instance besides its pixels."""

    class_name: str
    score: float = 1.0
    state: str = "proposed"

    def __post_init__(self) -> None:
        if self.state not in INSTANCE_STATES:
            raise ValueError(f"instance state must be one of {INSTANCE_STATES}, got {self.state!r}")

    @property
    def protected(self) -> bool:
        return self.state in PROTECTED_STATES


def table_from_records(records: Iterable[Mapping[str, Any]], classes: Sequence[str]) -> dict[int, InstanceInfo]:
    """Instance table of a pipeline result (records with ``id``, ``class_id``, ``score``)."""
    return {
        int(r["id"]): InstanceInfo(str(classes[int(r["class_id"])]), float(r["score"]), "proposed") for r in records
    }


def set_class(table: Mapping[int, InstanceInfo], ids: Iterable[int], class_name: str) -> dict[int, InstanceInfo]:
    """A copy of ``table`` where ``ids`` have class ``class_name`` and state ``edited``.

    Accepted instances stay accepted (their class was changed by a person).
    """
    out = dict(table)
    for i in ids:
        i = int(i)
        info = out.get(i, InstanceInfo(class_name))
        state = "accepted" if info.state == "accepted" else "edited"
        out[i] = replace(info, class_name=class_name, state=state)
    return out


def set_state(table: Mapping[int, InstanceInfo], ids: Iterable[int], state: str) -> dict[int, InstanceInfo]:
    """A copy of ``table`` with the state of ``ids`` set (ids not in the table are skipped)."""
    out = dict(table)
    for i in ids:
        if int(i) in out:
            out[int(i)] = replace(out[int(i)], state=state)
    return out


def accept_all(labels: np.ndarray, table: Mapping[int, InstanceInfo], default_class: str = "") -> dict[int, InstanceInfo]:
    """The table of an accepted image: every instance in ``labels`` marked ``accepted``.

    Instances without an entry (painted with a new id) get ``default_class``
    and score 1; entries of ids no longer in ``labels`` are kept unchanged.
    """
    ids = [int(i) for i in instance_ids(labels)]
    out = dict(table)
    for i in ids:
        out.setdefault(i, InstanceInfo(default_class, 1.0, "edited"))
    return set_state(out, ids, "accepted")


def instance_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted ids of the instances present (0 excluded).

    Counted, not sorted: a 3000² map in 15 ms where ``np.unique`` takes 50 ms.
    Ids are non-negative; one far above the others costs an array of its size.
    """
    flat = np.asarray(labels).ravel()
    if not flat.size:
        return np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("instance ids must be >= 0")
    ids = np.flatnonzero(label_counts(flat))
    return ids[ids != 0]


#: label maps with at least this many values are counted by torch (about twice as fast as numpy's bincount on int32 maps)
TORCH_COUNT_MIN = 1 << 16


def label_counts(values: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` of non-negative integer values (any shape), int64.

    Large int32 and int64 arrays are counted by ``torch.bincount``: numpy
    first copies int32 values to int64 (20 ms against 10 ms for a 3000² map).
    """
    flat = np.asarray(values).ravel()
    if flat.size >= TORCH_COUNT_MIN and flat.dtype in (np.int32, np.int64):
        import torch

        try:
            return torch.bincount(torch.from_numpy(np.ascontiguousarray(flat)), minlength=int(minlength)).numpy()
        except RuntimeError as err:  # negative values
            raise ValueError(f"cannot count negative values: {err}") from None
    return np.bincount(flat, minlength=int(minlength)).astype(np.int64, copy=False)


def protected_lookup(labels: np.ndarray, table: Mapping[int, InstanceInfo], unlisted: bool) -> np.ndarray:
    """``(max id + 1,)`` bools: which ids present in ``labels`` are edited or accepted.

    Index it with the map (``lookup[labels]``) for the protected pixels. Ids
    without a table entry count as ``unlisted``.
    """
    present = instance_ids(labels)
    lookup = np.zeros(int(present.max(initial=0)) + 1, bool)
    for i in present:
        info = table.get(int(i))
        lookup[i] = unlisted if info is None else info.protected
    return lookup


def instance_at(labels: np.ndarray, point: Sequence[float]) -> int:
    """Id under the pixel nearest ``point`` (y, x); 0 outside the image or on background."""
    y, x = (int(round(float(v))) for v in point[-2:])
    if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
        return 0
    return int(labels[y, x])


def next_free_id(labels: np.ndarray, table: Iterable[int] = ()) -> int:
    """The smallest id above every id in use, in the map or in the table."""
    top = int(labels.max()) if labels.size else 0
    for i in table:
        top = max(top, int(i))
    return top + 1


def features_table(
    labels: np.ndarray, table: Mapping[int, InstanceInfo], default_class: str = ""
) -> dict[str, np.ndarray]:
    """Per-instance columns for a napari Labels layer (``features``).

    One row per id present in ``labels`` plus row 0 for the background, with
    the columns ``index`` (the id), ``class``, ``score``, ``state`` and
    ``area`` (pixels). Ids missing from ``table`` get ``default_class``,
    score 1 and state ``edited`` (a person painted them).
    """
    flat = np.asarray(labels).ravel()
    if flat.size and flat.min() < 0:
        raise ValueError("instance ids must be >= 0")
    counts = label_counts(flat) if flat.size else np.zeros(1, np.int64)
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    rows = [table.get(int(i), InstanceInfo(default_class, 1.0, "edited")) for i in ids]
    return {
        "index": np.concatenate([[0], ids]).astype(np.int64),
        "class": np.array([""] + [r.class_name for r in rows], dtype=object),
        "score": np.array([0.0] + [r.score for r in rows], dtype=np.float64),
        "state": np.array(["background"] + [r.state for r in rows], dtype=object),
        "area": np.concatenate([[counts[0] if counts.size else 0], counts[ids]]).astype(np.int64),
    }


def instance_boxes(labels: np.ndarray) -> dict[int, tuple[list[int], int]]:
    """``{id: ([x0, y0, x1, y1], area)}`` of every instance in the map, in id order (bbox ends exclusive)."""
    from scipy.ndimage import find_objects

    labels = np.asarray(labels)
    if not labels.size:
        return {}
    counts = label_counts(labels)
    return {
        i: ([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], int(counts[i]))
        for i, sl in enumerate(find_objects(labels), start=1)
        if sl is not None
    }


def instance_records(labels: np.ndarray, table: Mapping[int, InstanceInfo], default_class: str = "") -> list[dict[str, Any]]:
    """One record per instance present: id, class, score, state, bbox ``[x0, y0, x1, y1]`` (exclusive ends), area.

    Ids missing from ``table`` are edited instances of ``default_class`` with score 1.
    """
    out = []
    for i, (bbox, area) in instance_boxes(labels).items():
        info = table.get(i, InstanceInfo(default_class, 1.0, "edited"))
        out.append({"id": i, "class": info.class_name, "score": float(info.score), "state": info.state, "bbox": bbox, "area": area})
    return out


@dataclass
class Masks:
    """One image's instances: the instance map, one record per instance, the annotator background, the image's state.

    The one type for an instance map with what is known about its instances,
    wherever it comes from: an annotation session
    (:meth:`~napari_irnet.annotation.session.AnnotationSession.to_masks`), a
    per-image folder or a project (the stores of
    :mod:`napari_irnet.store.image_store`, :meth:`~napari_irnet.store.project.Project.load_masks`).
    Make one from an instance table with :meth:`from_table`.

    Attributes
    ----------
    labels : (H, W) int
        Instance ids, 0 background.
    records : list of dict
        One per instance, in id order, as the files keep them: ``id``,
        ``class`` (name), ``score``, ``state`` (absent in a model's result:
        proposed), ``bbox`` ``[x0, y0, x1, y1]`` (exclusive ends), ``area``;
        other keys a caller stored are kept. :attr:`table` is the same as an
        instance table.
    state : str
        The image's state, one of :data:`IMAGE_STATES`.
    background : (H, W) bool or None
        The annotator background: pixels a person cleared (deleted or
        erased); re-runs never fill them and fine-tuning takes them as
        background.
    semantic : (H, W) uint8 or None
        Class index + 1 per pixel (a project's classes), where one is stored.
    source : str
        A project's masks: ``"result"`` (the model's) or ``"correction"`` (the annotator's).
    image_name, fingerprint, data_fingerprint
        Which image (the fingerprint of its pixels as the networks saw them,
        8-bit RGB as :func:`~napari_irnet.io.images.read_image` gives them, and
        of the image layer's own data; "" when unknown).
    classes : list of str
        The image-level classes used.
    checkpoint, params
        The checkpoint and ``Params.to_dict()`` of the proposals.
    updated : str
        ISO time of the last save (set by the per-image folder).
    """

    labels: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)
    state: str = "corrected"
    background: np.ndarray | None = None
    semantic: np.ndarray | None = None
    source: str = ""
    image_name: str = ""
    fingerprint: str = ""
    data_fingerprint: str = ""
    classes: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    params: dict[str, Any] | None = None
    updated: str = ""

    def __post_init__(self) -> None:
        if self.state not in IMAGE_STATES:
            raise ValueError(f"image state must be one of {IMAGE_STATES}, got {self.state!r}")

    @classmethod
    def from_table(cls, labels: np.ndarray, table: Mapping[int, InstanceInfo], default_class: str = "", **fields: Any) -> Masks:
        """Masks of an instance map and its table (:func:`instance_records`); ``fields`` as the attributes."""
        return cls(labels, instance_records(labels, table, default_class), **fields)

    @property
    def table(self) -> dict[int, InstanceInfo]:
        """The records as an instance table.

        A record without a valid state is ``proposed`` in a model's result,
        else ``accepted`` in an accepted image and ``edited`` otherwise; one
        without a score scores 1.
        """
        if self.source == "result":
            default = "proposed"
        else:
            default = "accepted" if self.state == "accepted" else "edited"
        table = {}
        for r in self.records:
            state = r.get("state") if r.get("state") in INSTANCE_STATES else default
            table[int(r["id"])] = InstanceInfo(str(r["class"]), float(r.get("score", 1.0)), state)
        return table

    @property
    def instance_classes(self) -> dict[int, str]:
        """``{instance id: class name}`` of the instances that have a class."""
        return {int(r["id"]): str(r["class"]) for r in self.records if r.get("class")}

    @property
    def instance_scores(self) -> dict[int, float]:
        """``{instance id: score}`` (1 where a record has none)."""
        return {int(r["id"]): float(r.get("score", 1.0)) for r in self.records}

    def same_as(self, other: Masks | None) -> bool:
        """Equal image state, pixels, annotator background and classes of the instances present."""
        if other is None or self.state != other.state:
            return False
        if self.labels.shape != other.labels.shape or not np.array_equal(self.labels, other.labels):
            return False
        shape = self.labels.shape
        if not np.array_equal(background_flags(self.background, shape), background_flags(other.background, shape)):
            return False
        mine, theirs = self.instance_classes, other.instance_classes
        return all(mine.get(int(i)) == theirs.get(int(i)) for i in instance_ids(self.labels))

    def copy(self) -> Masks:
        """A copy that shares no array or record with this one."""
        return replace(
            self,
            labels=np.array(self.labels, copy=True),
            records=[dict(r) for r in self.records],
            background=None if self.background is None else np.array(self.background, copy=True),
            semantic=None if self.semantic is None else np.array(self.semantic, copy=True),
            classes=list(self.classes),
            params=None if self.params is None else dict(self.params),
        )


def background_flags(background: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """An annotator background as a bool map of ``shape`` (all False for None)."""
    return np.zeros(shape, bool) if background is None else np.asarray(background, bool)


def cleared_since(before: Masks | None, labels: np.ndarray) -> np.ndarray | None:
    """The annotator background of ``labels`` edited from ``before``.

    ``before``'s own background plus the pixels that were instances in
    ``before`` and are background in ``labels`` (deleted or erased), limited
    to background pixels of ``labels`` (painting over a cleared pixel takes it
    back). None when nothing is cleared or there is no ``before`` of the same
    shape.
    """
    if before is None or before.labels.shape != labels.shape:
        return None
    bg = background_flags(before.background, labels.shape) | ((before.labels != 0) & (labels == 0))
    bg &= labels == 0
    return bg if bg.any() else None
