"""Windows of the instance walk: which cells of which plane are walked where.

The geometry of :mod:`napari_irnet.pipeline.instance_walk` (see its
docstring for the method): the windows of every plane (:func:`plan_windows`),
their growth when they leak mass (:func:`leaks`, :func:`grow`,
:func:`regrow`), and the sum of a plane's overlapping windows
(:func:`sum_overlaps`). Windows are boxes on the stride-4 grid, end
exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = ["WalkPlan", "Window", "grow", "leaks", "merge_boxes", "plan_windows", "regrow", "sum_overlaps"]


@dataclass
class Window:
    """One window of one plane on the stride-4 grid (end exclusive).

    ``own`` (window-shaped bool) marks the cells whose starting values this
    window walks: its piece of the plane's cluster (``None`` only for the
    sums of :func:`sum_overlaps`, which are not walked).
    """

    plane: int
    y0: int
    y1: int
    x0: int
    x1: int
    margin: int
    own: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass
class WalkPlan:
    """Which planes are walked where, and what it costs (for benchmarks and logs)."""

    planes: int
    windows: list[Window] = field(default_factory=list)
    grid_cells: int = 0
    #: growth rounds run, and windows grown in all
    rounds: int = 0
    grown: int = 0
    #: "local" or "global": what was walked
    method: str = "local"
    #: windows walked, and window walks taken from the memo of an earlier walk instead
    walked: int = 0
    reused: int = 0

    @property
    def window_cells(self) -> int:
        return sum(w.area for w in self.windows)

    @property
    def global_cells(self) -> int:
        """Cells the global walk would propagate: every plane over the whole grid."""
        return self.planes * self.grid_cells


def box_area(box: list[int]) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def merge_boxes(boxes: list[list[int]], only_if_cheaper: bool = False) -> list[list[int]]:
    """Union overlapping boxes [y0, y1, x0, x1] until none overlap.

    With ``only_if_cheaper``, two overlapping boxes merge only when their
    union holds no more cells than the two of them: boxes that overlap
    heavily become one, while scattered pieces do not grow into a box over
    the whole image (their overlaps are then summed, see :func:`sum_overlaps`).
    """
    boxes = [list(b) for b in boxes]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    union = [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]
                    if only_if_cheaper and box_area(union) > box_area(a) + box_area(b):
                        continue
                    boxes[i] = union
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def piece_windows(plane: int, support: np.ndarray, inside: np.ndarray, origin: tuple[int, int], margin: int) -> list[Window]:
    """The windows of one plane: boxes of the pieces of ``support`` (a crop at ``origin``) grown by ``margin``.

    Overlapping boxes merge where that adds no cells; a window's ``own``
    cells are the cells of the cluster (``inside``) in its box that no
    earlier window of the plane holds, so that each starts in one window.
    The crop reaches ``margin`` beyond the cluster on every side the grid
    allows.
    """
    grown = ndi.binary_dilation(support, np.ones((3, 3), bool), iterations=margin) if margin else support
    labels, _ = ndi.label(grown)
    oy, ox = origin
    boxes = [[sl[0].start, sl[0].stop, sl[1].start, sl[1].stop] for sl in ndi.find_objects(labels) if sl is not None]
    free = inside.copy()
    windows = []
    for y0, y1, x0, x1 in merge_boxes(boxes, only_if_cheaper=True):
        windows.append(Window(plane, y0 + oy, y1 + oy, x0 + ox, x1 + ox, margin, free[y0:y1, x0:x1].copy()))
        free[y0:y1, x0:x1] = False
    return windows


def plan_windows(start: np.ndarray, clusters: np.ndarray, tolerance: float, margin: int) -> WalkPlan:
    """Windows of every plane that carries mass above the tolerance.

    Parameters
    ----------
    start : (C, h, w) float array
        The class maps the walk starts from (CAM ⊙ (1 - boundary)).
    clusters : (h, w) int array
        Cluster index 0..K-1 of every grid cell.
    tolerance : float
        Cells under ``tolerance × start.max()`` are left out of the support.
    margin : int
        Cells added around every piece of support.

    Returns
    -------
    WalkPlan
        Windows in plane order (plane ``c·K + k``).
    """
    n_classes, h, w = start.shape
    k_total = int(clusters.max()) + 1 if clusters.size else 0
    plan = WalkPlan(planes=n_classes * k_total, grid_cells=h * w)
    top = float(start.max()) if start.size else 0.0
    if top <= 0 or k_total == 0:
        return plan
    strong = start > tolerance * top  # (C, h, w)
    found = ndi.find_objects(clusters.astype(np.int64) + 1, max_label=k_total)
    per_plane: dict[int, list[Window]] = {}
    for k, sl in enumerate(found):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - margin, 0), min(sl[0].stop + margin, h))
        xs = slice(max(sl[1].start - margin, 0), min(sl[1].stop + margin, w))
        inside = clusters[ys, xs] == k
        for c in range(n_classes):
            support = inside & strong[c, ys, xs]
            if not support.any():
                continue
            plane = c * k_total + k
            per_plane[plane] = piece_windows(plane, support, inside, (ys.start, xs.start), margin)
    plan.windows = [win for plane in sorted(per_plane) for win in per_plane[plane]]
    return plan


def leaks(win: Window, part: torch.Tensor, level: float, shape: tuple[int, int]) -> bool:
    """Whether the walked window still holds ``level`` or more on its border ring.

    The walk is an average over neighbourhoods, so what the window lost at its
    border is at most what the plane holds just outside it; a border ring
    under ``level`` bounds the error inside by ``level``. Sides on the image
    border are not checked: no mass leaves there.
    """
    h, w = shape
    rims = []
    if win.y0 > 0:
        rims.append(part[0])
    if win.y1 < h:
        rims.append(part[-1])
    if win.x0 > 0:
        rims.append(part[:, 0])
    if win.x1 < w:
        rims.append(part[:, -1])
    return any(bool((rim >= level).any()) for rim in rims)


def grow(win: Window, shape: tuple[int, int]) -> Window:
    """The window grown by twice its margin on every side (clipped to ``shape``), with the same starting cells."""
    h, w = shape
    m = 2 * win.margin if win.margin else 4
    big = Window(win.plane, max(win.y0 - m, 0), min(win.y1 + m, h), max(win.x0 - m, 0), min(win.x1 + m, w), m)
    big.own = np.zeros((big.y1 - big.y0, big.x1 - big.x0), bool)
    big.own[win.y0 - big.y0 : win.y1 - big.y0, win.x0 - big.x0 : win.x1 - big.x0] = win.own
    return big


def regrow(
    windows: list[Window], walked: list[torch.Tensor], small: list[int], shape: tuple[int, int]
) -> tuple[list[tuple[Window, torch.Tensor]], list[Window]]:
    """Grow the ``small`` windows; merge them with their plane's windows where the union adds no cells.

    Returns the (window, walked) pairs that stay as they were and the new
    windows to walk (a merged window starts from its members' cells).
    """
    grown = {i: grow(windows[i], shape) for i in small}
    planes = {windows[i].plane for i in small}
    keep = [(win, part) for win, part in zip(windows, walked) if win.plane not in planes]
    redo = []
    for plane in sorted(planes):
        members = [(grown.get(i, win), i in grown, walked[i]) for i, win in enumerate(windows) if win.plane == plane]
        for y0, y1, x0, x1 in merge_boxes([[w.y0, w.y1, w.x0, w.x1] for w, _, _ in members], only_if_cheaper=True):
            inside = [(w, changed, part) for w, changed, part in members if y0 <= w.y0 and w.y1 <= y1 and x0 <= w.x0 and w.x1 <= x1]
            if len(inside) == 1 and not inside[0][1]:
                keep.append((inside[0][0], inside[0][2]))
                continue
            if len(inside) == 1:
                redo.append(inside[0][0])
                continue
            merged = Window(plane, y0, y1, x0, x1, max(w.margin for w, _, _ in inside), np.zeros((y1 - y0, x1 - x0), bool))
            for w, _, _ in inside:
                merged.own[w.y0 - y0 : w.y1 - y0, w.x0 - x0 : w.x1 - x0] |= w.own
            redo.append(merged)
    return keep, redo


def sum_overlaps(windows: list[Window], walked: list[torch.Tensor]) -> tuple[list[Window], list[torch.Tensor]]:
    """Overlapping windows of a plane summed into the boxes that hold them (windows in plane order)."""
    out_windows: list[Window] = []
    out_parts: list[torch.Tensor] = []
    i = 0
    while i < len(windows):
        j = i
        while j < len(windows) and windows[j].plane == windows[i].plane:
            j += 1
        wins, parts = windows[i:j], walked[i:j]
        boxes = merge_boxes([[w.y0, w.y1, w.x0, w.x1] for w in wins]) if len(wins) > 1 else [[wins[0].y0, wins[0].y1, wins[0].x0, wins[0].x1]]
        for y0, y1, x0, x1 in sorted(boxes, key=lambda b: (b[0], b[2])):
            inside = [(w, p) for w, p in zip(wins, parts) if y0 <= w.y0 and w.y1 <= y1 and x0 <= w.x0 and w.x1 <= x1]
            if len(inside) == 1:
                out_windows.append(inside[0][0])
                out_parts.append(inside[0][1])
                continue
            total = parts[0].new_zeros((y1 - y0, x1 - x0))
            for w, p in inside:
                total[w.y0 - y0 : w.y1 - y0, w.x0 - x0 : w.x1 - x0] += p
            out_windows.append(Window(wins[0].plane, y0, y1, x0, x1, max(w.margin for w, _ in inside)))
            out_parts.append(total)
        i = j
    return out_windows, out_parts
