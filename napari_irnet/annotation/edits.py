"""Corrections of an instance map: small pure functions on label arrays.

The annotation session (:class:`~napari_irnet.annotation.session.AnnotationSession`)
turns a person's actions into calls of these functions and applies what they
return; nothing here knows about napari or Qt.

- An *instance map* is an ``(H, W)`` integer array: 0 background, k > 0 the
  pixels of instance k; its *instance table* maps each id to an
  :class:`~napari_irnet.annotation.masks.InstanceInfo` (class, score, state).
  Edited and accepted instances are *protected*: a re-run of the pipeline
  never overwrites them (:func:`merge_proposal`), and neither does it fill
  the pixels the annotator cleared (the *annotator background*).
- Every edit returns a :class:`~napari_irnet.annotation.history.LabelDiff`,
  the pixels it changes with their old and new values, so it can be applied,
  undone and redone exactly.

Typical use::

    diff = merge(labels, [3, 7])          # instance 7 becomes part of 3
    diff.apply(labels)                    # in place
    diff.apply(labels, reverse=True)      # undo
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .history import LabelDiff
from .masks import InstanceInfo, instance_at, label_counts, next_free_id, protected_lookup

__all__ = [
    "delete",
    "EditError",
    "instance_gap",
    "merge",
    "merge_proposal",
    "split_by_line",
    "split_by_seeds",
]


class EditError(ValueError):
    """An edit that cannot be done as asked (the message says why)."""


def _present(labels: np.ndarray, ids: Iterable[int]) -> list[int]:
    ids = [int(i) for i in ids]
    missing = [i for i in ids if i == 0 or not np.any(labels == i)]
    if missing:
        raise EditError(f"no instance with id {missing[0]} in the map")
    return ids


def merge(labels: np.ndarray, ids: Sequence[int]) -> LabelDiff:
    """Merge the instances ``ids`` into the first of them."""
    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) < 2:
        raise EditError("merge needs two different instances")
    _present(labels, ids)
    idx = np.flatnonzero(np.isin(labels.ravel(), ids[1:]))
    return LabelDiff.assign(labels, idx, ids[0])


def delete(labels: np.ndarray, ids: Iterable[int]) -> LabelDiff:
    """Remove the instances ``ids`` (their pixels become background)."""
    ids = _present(labels, ids)
    if not ids:
        raise EditError("nothing to delete")
    return LabelDiff.assign(labels, np.flatnonzero(np.isin(labels.ravel(), ids)), 0)


def _bbox(mask: np.ndarray, pad: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    return (
        slice(max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, shape[0])),
        slice(max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, shape[1])),
    )


def _line_mask(shape: tuple[int, int], line: np.ndarray) -> np.ndarray:
    """8-connected pixels of a polyline (y, x), clipped to the image."""
    from skimage.draw import line as draw_line

    mask = np.zeros(shape, bool)
    pts = np.rint(np.asarray(line, dtype=np.float64)[:, -2:]).astype(np.int64)
    if len(pts) == 1:
        pts = np.concatenate([pts, pts])
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(int(y0), int(x0), int(y1), int(x1))
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        mask[rr[ok], cc[ok]] = True
    return mask


def _fill_from_nearest(parts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give every unassigned pixel of ``mask`` the value of the nearest assigned one."""
    from scipy.ndimage import distance_transform_edt

    todo = mask & (parts == 0)
    if not todo.any() or not (parts > 0).any():
        return parts
    _, (iy, ix) = distance_transform_edt(parts == 0, return_indices=True)
    out = parts.copy()
    out[todo] = parts[iy[todo], ix[todo]]
    return out


def _relabel_parts(
    labels: np.ndarray, window: tuple[slice, slice], parts: np.ndarray, label_id: int, new_id: int
) -> tuple[LabelDiff, list[int]]:
    """Parts 1..n of one instance inside ``window``: the largest keeps ``label_id``."""
    n = int(parts.max())
    sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable") + 1  # part numbers, largest first
    values = np.zeros(n + 1, np.int64)
    values[order[0]] = label_id
    new_ids = list(range(new_id, new_id + n - 1))
    values[order[1:]] = new_ids
    ys, xs = np.nonzero(parts)
    flat = np.ravel_multi_index((ys + window[0].start, xs + window[1].start), labels.shape)
    return LabelDiff.assign(labels, flat, values[parts[ys, xs]]), new_ids


def split_by_line(
    labels: np.ndarray, line: np.ndarray, label_id: int | None = None, new_id: int | None = None
) -> tuple[LabelDiff, list[int]]:
    """Cut an instance in two (or more) along a drawn polyline.

    Parameters
    ----------
    line : (N, 2) float
        Vertices (y, x) in pixels; N >= 2.
    label_id : int, optional
        The instance to cut; default the one the line crosses most.
    new_id : int, optional
        First id for the new parts; default :func:`next_free_id`.

    Returns
    -------
    (diff, new ids)
        The largest part keeps ``label_id``; the others get new ids. Pixels
        on the line itself go to the nearest part.

    Raises
    ------
    EditError
        The line misses every instance or does not cut it apart.
    """
    line = np.asarray(line, dtype=np.float64).reshape(-1, 2)
    if len(line) < 2:
        raise EditError("a split line needs at least two points")
    cut = _line_mask(labels.shape, line)
    if label_id is None:
        under = labels[cut]
        under = under[under != 0]
        if under.size == 0:
            raise EditError("the split line crosses no instance")
        label_id = int(np.bincount(under).argmax())
    mask = labels == label_id
    if not mask.any():
        raise EditError(f"no instance with id {label_id} in the map")
    window = _bbox(mask, 1, labels.shape)
    sub_mask, sub_cut = mask[window], cut[window]
    from skimage.measure import label as connected_components

    parts = connected_components(sub_mask & ~sub_cut, connectivity=1, background=0)
    if parts.max() < 2:
        raise EditError(f"the line does not cut instance {label_id} apart: draw it across the whole instance")
    parts = _fill_from_nearest(parts, sub_mask)
    if new_id is None:
        new_id = next_free_id(labels)
    return _relabel_parts(labels, window, parts, label_id, new_id)


def split_by_seeds(
    labels: np.ndarray,
    seeds: np.ndarray,
    new_id: int | None = None,
    image: np.ndarray | None = None,
) -> tuple[LabelDiff, list[int]]:
    """Split one instance between two (or more) clicked seeds with a watershed.

    The landscape is the negative distance to the instance border (touching
    round objects part at their neck), plus the image gradient when ``image``
    is given (parts follow edges).

    Parameters
    ----------
    seeds : (S, 2) float
        Points (y, x) inside the same instance, S >= 2.
    image : (H, W) or (H, W, 3), optional
        Intensities whose edges guide the split.

    Returns
    -------
    (diff, new ids)
        The part of the first seed keeps the instance's id.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import watershed

    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 2)
    if len(seeds) < 2:
        raise EditError("a split needs two seeds inside one instance")
    ids = {instance_at(labels, s) for s in seeds}
    if 0 in ids:
        raise EditError("every seed must lie inside an instance")
    if len(ids) != 1:
        raise EditError(f"the seeds lie in different instances ({sorted(ids)}); put both inside the one to split")
    label_id = ids.pop()
    pix = np.rint(seeds).astype(np.int64)
    if len({tuple(p) for p in pix}) < len(pix):
        raise EditError("two seeds fall on the same pixel")
    mask = labels == label_id
    window = _bbox(mask, 1, labels.shape)
    sub = mask[window]
    landscape = -distance_transform_edt(sub)
    if image is not None:
        from skimage.filters import sobel

        img = np.asarray(image, dtype=np.float64)
        gray = img.mean(axis=-1) if img.ndim == 3 else img
        grad = sobel(gray[window])
        scale = np.abs(landscape).max() / (grad[sub].max() + 1e-9)
        landscape = landscape + grad * scale
    markers = np.zeros(sub.shape, np.int64)
    for k, (y, x) in enumerate(pix, start=1):
        markers[y - window[0].start, x - window[1].start] = k
    parts = watershed(landscape, markers, mask=sub)
    if new_id is None:
        new_id = next_free_id(labels)
    # the first seed's part keeps the id; the others get new ids in seed order
    values = np.zeros(len(pix) + 1, np.int64)
    values[1] = label_id
    new_ids = list(range(new_id, new_id + len(pix) - 1))
    values[2:] = new_ids
    ys, xs = np.nonzero(parts)
    flat = np.ravel_multi_index((ys + window[0].start, xs + window[1].start), labels.shape)
    return LabelDiff.assign(labels, flat, values[parts[ys, xs]]), new_ids


def merge_proposal(
    proposed: np.ndarray,
    proposed_table: Mapping[int, InstanceInfo],
    current: np.ndarray,
    current_table: Mapping[int, InstanceInfo],
    background: np.ndarray | None = None,
    min_area: int = 1,
) -> tuple[np.ndarray, dict[int, InstanceInfo]]:
    """A new pipeline result merged with the annotator's corrections.

    - Protected (edited or accepted) instances of ``current`` keep their
      pixels and ids.
    - Pixels of ``background`` (the annotator's: deleted instances, erased
      pixels) stay background.
    - Proposed instances fill the rest. One that overlaps an unprotected
      instance of ``current`` by at least half the smaller of the two keeps
      that instance's id (each id once, the largest overlaps first), so an
      unedited instance keeps its id, and its colour, across re-runs; the
      others get ids above every id in use. A proposal left with fewer than
      ``min_area`` pixels is dropped.

    Returns
    -------
    (labels (H, W) int32, table)
    """
    if proposed.shape != current.shape:
        raise ValueError(f"shapes differ: {proposed.shape} and {current.shape}")
    protected = protected_lookup(current, current_table, unlisted=False)
    kept = [int(i) for i in np.flatnonzero(protected)]
    keep = protected[current] if kept else None  # None: nothing kept (full-image passes saved on large maps)
    cleared = keep
    if background is not None:
        keep_bg = np.asarray(background, bool)
        if keep_bg.shape != current.shape:
            raise ValueError(f"background {keep_bg.shape} and instances {current.shape} differ in shape")
        if keep_bg.any():
            cleared = keep_bg if keep is None else keep | keep_bg
    free = proposed if cleared is None else np.where(cleared, 0, proposed)
    counts = label_counts(free, minlength=int(proposed.max(initial=0)) + 1)
    survivors = [i for i in range(1, counts.size) if counts[i] >= max(min_area, 1)]
    old = current if keep is None else np.where(keep, 0, current)
    reuse = _matching_ids(free, old, counts)
    top = max([int(current.max(initial=0)), *kept, *(int(i) for i in current_table)], default=0)
    lut = np.zeros(counts.size, np.int32)
    for i in survivors:
        if i in reuse:
            lut[i] = reuse[i]
        else:
            top += 1
            lut[i] = top
    out = lut[free] if keep is None else np.where(keep, current, lut[free]).astype(np.int32, copy=False)
    table = {i: current_table[i] for i in kept}
    for i in survivors:
        info = proposed_table.get(i)
        if info is not None:
            table[int(lut[i])] = info
    return out, table


def _matching_ids(new: np.ndarray, old: np.ndarray, new_areas: np.ndarray) -> dict[int, int]:
    """new id -> old id for pairs overlapping by half the smaller instance or more (greedy, largest first)."""
    both = (new > 0) & (old > 0)
    if not both.any():
        return {}
    n, o = new[both].astype(np.int64), old[both].astype(np.int64)
    stride = int(o.max()) + 1
    keys = n * stride + o
    if (int(n.max()) + 1) * stride <= max(1 << 22, 4 * keys.size):  # counted, not sorted
        counts = label_counts(keys)
        pairs = np.flatnonzero(counts)
        overlap = counts[pairs]
    else:
        pairs, overlap = np.unique(keys, return_counts=True)
    old_areas = label_counts(old, minlength=stride)
    out: dict[int, int] = {}
    taken: set[int] = set()
    for k in np.argsort(-overlap, kind="stable"):
        ni, oi = divmod(int(pairs[k]), stride)
        if ni in out or oi in taken:
            continue
        if 2 * int(overlap[k]) >= min(int(new_areas[ni]), int(old_areas[oi])):
            out[ni] = oi
            taken.add(oi)
    return out


def instance_gap(labels: np.ndarray, ids: Sequence[int]) -> float:
    """How far the instances ``ids`` lie apart: 0 when they touch (8-connected), else pixels.

    The largest distance from one of them to the nearest of the others, so
    a merge of several instances is flagged when any one lies apart.
    """
    from scipy.ndimage import distance_transform_edt

    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) < 2:
        return 0.0
    union = np.isin(labels, ids)
    if not union.any():
        return 0.0
    window = _bbox(union, 1, labels.shape)
    sub = labels[window]
    gap = 0.0
    for i in ids:
        own = sub == i
        others = np.isin(sub, [j for j in ids if j != i])
        if not own.any() or not others.any():
            continue
        dist = distance_transform_edt(~others)[own].min()
        gap = max(gap, float(dist))
    return 0.0 if gap < 1.5 else gap - 1.0
