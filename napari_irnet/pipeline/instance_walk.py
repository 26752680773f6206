"""The instance walk in windows: cost that grows with the pixels, not pixels × instances.

IRNet propagates one map per (class, instance) pair over the whole image
(the reference's ``make_ins_seg_labels``: ``C·K`` channels, each walked on
every grid cell), so its cost is ``steps · 69 · C·K · N``: quadratic in the
image side for images whose object count grows with their area.  Here every
*plane* (class ``c`` of cluster ``k``: the CAM of ``c`` inside cluster ``k``)
is walked only inside windows around the cells where it carries mass:

1. **Support.** The plane's starting map ``x = CAM_c ⊙ [cluster = k] ⊙ (1 - B)``
   keeps only cells above ``walk_tolerance × max(x over all planes)``.  The
   walk is an averaging operator (every cell becomes a weighted mean of its
   neighbours), so dropping starting values under ``δ`` changes every walked
   value by less than ``δ``.  A plane without such cells cannot reach the
   tolerance anywhere and is not walked at all.
2. **Windows.** The support is grown by ``radius - 1`` cells (how far one
   step reaches); each connected piece's bounding box is a window
   (overlapping boxes merge where the union adds no cells), starting from
   the plane's values in the cluster's cells of the box (each cell in one
   window only).  Windows of one plane may overlap: the walk being linear,
   their walks add up.
3. **Packing.** Windows are packed edge to edge into canvases, each canvas
   holding the image's own transition weights cropped around every window,
   with the weight of every neighbour outside a cell's own window set to 0.
   One stencil walk per canvas walks all its windows at once (few, large
   operations per step); mass that leaves a window is lost, as with an
   absorbing border, and no window reads another's.
4. **Growth.** A window whose walked border still holds ``walk_tolerance``
   of the largest walked score or more lost mass that matters: it grows by
   twice its margin (merging with its plane's windows where the union adds
   no cells) and is walked again from the same starting cells, until no
   window leaks or it covers the whole grid.  The
   walk averages over neighbourhoods, so a border under that level bounds
   the error inside the window by it.
5. **Argmax.** Overlapping windows of a plane are summed into the box that
   holds them.  Every window is upsampled ×4 (bilinear) on its own and merged
   into the full-resolution best score and best plane, as
   :func:`~napari_irnet.pipeline.stages.upsampled_argmax` does for whole
   planes.

The cost is the sum of the window areas (a few times the grid for the
densities of cells in microscopy) instead of ``C·K`` times the grid, and the
result equals the global walk up to the dropped mass: the tests and
``benchmarks/bench_scale.py`` compare both.  :func:`instance_walk_argmax`
with ``method="global"`` keeps the reference's formulation, which is also
what ``"auto"`` picks when the windows would cover more than the whole
planes (small images with few instances).

The windows themselves (steps 1, 2, 4 and the sums of step 5) are in
:mod:`napari_irnet.pipeline.walk_windows`; this module walks them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..params import INSTANCE_WALKS
from ..progress import Step, StepGenerator, run_steps
from .random_walk import iter_transition, iter_walks, make_walker, neighbour_offsets, transition_weights
from .stages import instance_cams, upsampled_argmax
from .threads import side_by_side
from .walk_windows import WalkPlan, Window, leaks, plan_windows, regrow, sum_overlaps

__all__ = ["WalkPlan", "instance_walk_argmax", "iter_instance_walk", "plan_windows"]

#: largest canvas of packed windows walked at once (cells). Every step reads all of a
#: canvas's transition weights (69 × 4 bytes a cell): canvases of 2^17 cells (36 MB of
#: weights) keep them in the processor's last-level cache from step to step; on the 2-core
#: CPU a 3000² image's instance walk took 5.9 s with these and 7.8 s with canvases of 2^20
CANVAS_CELLS = 1 << 17
#: smallest canvas (cells) when the windows are split so that every thread has canvases to walk
CANVAS_MIN_CELLS = 1 << 10

Argmax = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _canvas_count(cells: int, threads: int) -> int:
    """How many canvases hold windows of ``cells`` cells: every thread walks as many, each at most
    :data:`CANVAS_CELLS` and at least :data:`CANVAS_MIN_CELLS` (one canvas for fewer cells)."""
    count = threads * -(-cells // (threads * CANVAS_CELLS))
    return max(1, min(count, cells // CANVAS_MIN_CELLS))


def _pack(windows: list[Window], count: int) -> list[tuple[tuple[int, int], list[tuple[Window, int, int]]]]:
    """Windows in ``count`` canvases of about equal area, shelf-packed edge to edge in each.

    The windows, tallest first, are cut into ``count`` runs of about equal
    area, so that each canvas holds windows of about one height and its
    shelves fit tightly. Returns a list of canvases ``((height, width),
    [(window, top, left), ...])``.
    """
    order = sorted(windows, key=lambda win: (-(win.y1 - win.y0), -(win.x1 - win.x0)))
    areas = np.array([win.area for win in order], np.float64)
    middles = np.cumsum(areas) - areas / 2  # a window goes to the run its middle falls in
    share = max(1.0, areas.sum() / max(1, count))
    run = np.minimum(middles // share, max(1, count) - 1).astype(int)
    groups: list[list[Window]] = [[] for _ in range(max(1, count))]
    for win, i in zip(order, run):
        groups[i].append(win)
    return [_shelves(group) for group in groups if group]


def _shelves(windows: list[Window]) -> tuple[tuple[int, int], list[tuple[Window, int, int]]]:
    """Rows ("shelves") of windows, the tallest first, in the canvas of the fewest cells.

    Canvases from about 0.8 to 1.25 times as wide as the windows' square are
    tried (a partly filled last shelf can waste a twentieth of a canvas).
    """
    order = sorted(windows, key=lambda win: (-(win.y1 - win.y0), -(win.x1 - win.x0)))
    widest = max(win.x1 - win.x0 for win in windows)
    side = np.sqrt(sum(win.area for win in windows))
    best = None
    for width in sorted({max(widest, int(side * f) + 1) for f in np.linspace(0.8, 1.25, 10)}):
        placed: list[tuple[Window, int, int]] = []
        top = left = shelf = 0
        for win in order:
            hh, ww = win.y1 - win.y0, win.x1 - win.x0
            if left + ww > width and left > 0:
                top, left, shelf = top + shelf, 0, 0
            placed.append((win, top, left))
            left += ww
            shelf = max(shelf, hh)
        if best is None or (top + shelf) * width < best[0][0] * best[0][1]:
            best = (top + shelf, width), placed
    return best


def _isolate(weights: torch.Tensor, owner: torch.Tensor, offsets: np.ndarray) -> None:
    """Zero, in place, the weight of every neighbour outside a cell's own window.

    ``weights`` (K, h, w) of a canvas; ``owner`` (h + 2p, w + 2p) the number
    of the window holding each cell (0: none), bordered by ``p`` = the
    largest offset. Weight ``k`` of cell ``(y, x)`` scales the value at
    ``(y + dy_k, x + dx_k)``.
    """
    pad = int(np.abs(offsets).max())
    _, h, w = weights.shape
    own = owner[pad : pad + h, pad : pad + w]
    for k, (dy, dx) in enumerate(offsets.tolist()):
        weights[k].mul_(owner[pad + dy : pad + dy + h, pad + dx : pad + dx + w] == own)


def _walk_windows(
    windows: list[Window],
    start: torch.Tensor,
    weights: torch.Tensor,
    steps: int,
    radius: int,
    k_total: int,
    counter: list[int],
    stage: str,
    memo: dict,
    store: dict,
) -> StepGenerator[list[torch.Tensor]]:
    """Walk every window, packed into canvases; returns each window's ``(wh, ww)`` result.

    Windows found in ``memo`` (from an earlier walk of the same image with the
    same walk parameters: the same class, box and starting cells) are not
    walked again, so that moving one centroid re-walks only the clusters it
    changed; every window's result goes into ``store``. The canvases are independent walks (:func:`~napari_irnet.pipeline.random_walk.iter_walks`:
    side by side on the CPU's threads); each is filled only when its walk
    starts, so at most one canvas per thread is in memory. ``counter`` is
    ``[steps done, steps planned]`` across calls, for the yielded steps.
    """
    keys = [_window_key(win, k_total) for win in windows]
    known = {key: store.get(key, memo.get(key)) for key in keys}
    todo = [(win, key) for win, key in zip(windows, keys) if known[key] is None]
    walked = yield from _walk_new_windows([win for win, _ in todo], start, weights, steps, radius, k_total, counter, stage)
    known.update(zip((key for _, key in todo), walked))
    store.update(known)
    return [known[key] for key in keys]


def _window_key(win: Window, k_total: int) -> tuple:
    """What a window's walk depends on besides the image's outputs: its class, box and starting cells."""
    return win.plane // k_total, win.y0, win.y1, win.x0, win.x1, hashlib.blake2b(np.packbits(win.own).tobytes(), digest_size=16).digest()


def _walk_new_windows(
    windows: list[Window],
    start: torch.Tensor,
    weights: torch.Tensor,
    steps: int,
    radius: int,
    k_total: int,
    counter: list[int],
    stage: str,
) -> StepGenerator[list[torch.Tensor]]:
    """Walk windows packed into canvases (see :func:`_walk_windows`)."""
    if not windows:
        return []
    counter[2] += len(windows)
    offsets = neighbour_offsets(radius)
    pad = int(np.abs(offsets).max())
    threads = torch.get_num_threads() if start.device.type == "cpu" else 1
    cells = sum(win.area for win in windows)
    canvases = _pack(windows, _canvas_count(cells, threads))

    def canvas_walk(size: tuple[int, int], placed: list[tuple[Window, int, int]]):
        ch, cw = size
        x = start.new_zeros((1, ch, cw))
        w = weights.new_zeros((weights.shape[0], ch, cw))
        owner = torch.zeros((ch + 2 * pad, cw + 2 * pad), dtype=torch.int32, device=start.device)
        for number, (win, top, left) in enumerate(placed, 1):
            ys, xs = win.slices
            dst = (slice(top, top + win.y1 - win.y0), slice(left, left + win.x1 - win.x0))
            x[0][dst] = start[win.plane // k_total][ys, xs] * torch.from_numpy(win.own).to(start.device)
            w[(slice(None),) + dst] = weights[(slice(None), ys, xs)]
            owner[pad + dst[0].start : pad + dst[0].stop, pad + dst[1].start : pad + dst[1].stop] = number
        _isolate(w, owner, offsets)
        walked = yield from make_walker(w, radius)(x, steps)
        return [walked[0, top : top + win.y1 - win.y0, left : left + win.x1 - win.x0].clone() for win, top, left in placed]

    jobs = [lambda size=size, placed=placed: canvas_walk(size, placed) for size, placed in canvases]
    before, counter[1] = counter[0], counter[1] + steps * len(canvases)
    walking = iter_walks(jobs, steps, stage, start.device, threads)
    while True:
        try:
            step = next(walking)
        except StopIteration as result:
            parts = result.value
            break
        yield Step(stage, before + step.done, counter[1])
    counter[0] = before + steps * len(canvases)
    results = {id(win): part for (_, placed), canvas_parts in zip(canvases, parts) for (win, _, _), part in zip(placed, canvas_parts)}
    return [results[id(win)] for win in windows]


def _full_resolution_argmax(windows: list[Window], walked: list[torch.Tensor], image_shape: tuple[int, int], stride: int = 4) -> Argmax:
    """Upsample every window ×``stride`` (bilinear) and keep the best plane per pixel.

    Overlapping windows of one plane are summed first (:func:`sum_overlaps`).
    The image's rows are split into one band per thread (:func:`side_by_side`),
    each band taking every window over it in the same order, so the result is
    that of one pass over the whole image (a window across two bands is
    upsampled in each).
    """
    windows, walked = sum_overlaps(windows, walked)
    H, W = image_shape
    device = walked[0].device if walked else torch.device("cpu")
    dtype = walked[0].dtype if walked else torch.float32
    best = torch.full((H, W), -1.0, dtype=dtype, device=device)
    arg = torch.zeros((H, W), dtype=torch.int32, device=device)

    parts = max(1, torch.get_num_threads()) if device.type == "cpu" else 1

    def band(rows: tuple[int, int]) -> torch.Tensor:
        r0, r1 = rows
        gmax = torch.zeros((), dtype=dtype, device=device)
        for win, part in zip(windows, walked):
            Y0, X0 = stride * win.y0, stride * win.x0
            Y1, X1 = min(stride * win.y1, H), min(stride * win.x1, W)
            top, bottom = max(Y0, r0), min(Y1, r1)
            if top >= bottom:
                continue
            up = F.interpolate(part[None, None], scale_factor=stride, mode="bilinear", align_corners=False)[0, 0]
            up = up[top - Y0 : bottom - Y0, : X1 - X0]
            region = best[top:bottom, X0:X1]
            better = up > region
            best[top:bottom, X0:X1] = torch.where(better, up, region)
            arg[top:bottom, X0:X1] = torch.where(better, torch.full_like(arg[top:bottom, X0:X1], win.plane), arg[top:bottom, X0:X1])
            gmax = torch.maximum(gmax, up.max())
        return gmax

    edges = [H * i // parts for i in range(parts + 1)]
    gmax = torch.zeros((), dtype=dtype, device=device)
    for band_max in side_by_side(band, list(zip(edges[:-1], edges[1:]))):
        gmax = torch.maximum(gmax, band_max)
    return best, arg, gmax


def iter_instance_walk(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    clusters: np.ndarray,
    image_shape: tuple[int, int],
    *,
    beta: float = 10.0,
    steps: int = 256,
    radius: int = 5,
    tolerance: float = 0.01,
    method: str = "auto",
    weights: torch.Tensor | None = None,
    stage: str = "instance walk",
    memo: dict | None = None,
    plans: dict | None = None,
) -> StepGenerator[tuple[Argmax | None, WalkPlan]]:
    """The instance walk and its full-resolution argmax, as a step generator.

    Parameters
    ----------
    cams : (C, h, w) tensor
        Stride-4 class maps of the image's classes.
    boundary : (h, w) tensor in [0, 1]
    clusters : (h, w) int array
        Cluster index 0..K-1 of every grid cell; plane ``c·K + k`` is class
        ``c`` inside cluster ``k``.
    image_shape : (H, W) of the full-resolution image
    beta, steps, radius : the walk's parameters
    tolerance : float
        ``walk_tolerance``: mass under this fraction of the maximum is left
        out, and windows grow until their borders hold less.
    method : {"auto", "local", "global"}
        ``"local"``: windows (see the module docstring); ``"global"``: every
        plane over the whole grid, as the reference does; ``"auto"``: local
        unless its windows would cover more cells than the global walk.
    weights : (69, h, w) tensor, optional
        :func:`~napari_irnet.pipeline.random_walk.transition_weights` of
        ``boundary`` with this ``beta`` and ``radius``, when already computed.
    memo : dict, optional
        Walked windows of an earlier call for the same image, ``beta``,
        ``steps`` and ``radius`` (the caller keeps it, and empties it when
        one of those changes): windows with the same class, box and cluster
        mask are taken from it. It is left holding this call's windows.
    plans : dict, optional
        Window plans of earlier calls (the caller keeps it): the plan
        depends only on the starting maps, the clusters, ``tolerance`` and
        ``radius``, so a change of ``beta`` or ``steps`` plans nothing
        again. It keeps the last few plans.

    Yields
    ------
    :class:`~napari_irnet.progress.Step` as the walk steps advance (every few steps).

    Returns
    -------
    ((best (H, W), plane (H, W), global max) or None when no plane carries
    mass, :class:`WalkPlan`)
    """
    if method not in INSTANCE_WALKS:
        raise ValueError(f"unknown instance walk method {method!r}; use one of {', '.join(INSTANCE_WALKS)}")
    boundary = boundary.to(cams.device, cams.dtype)
    start = cams * (1.0 - boundary)
    if weights is None:
        weights = transition_weights(boundary, radius=radius, beta=beta)
    k_total = int(clusters.max()) + 1 if clusters.size else 0
    plan = _planned(start.cpu().numpy(), clusters, tolerance, int(radius) - 1, plans)
    if method == "global" or (method == "auto" and plan.window_cells >= plan.global_cells):
        plan.method = "global"
        planes = instance_cams(start, clusters)
        walked = yield from iter_transition(planes, weights, steps, radius, stage=stage)
        return (upsampled_argmax(walked, image_shape) if walked.shape[0] else None), plan
    if not plan.windows:
        return None, plan
    counter = [0, 0, 0]  # steps done, steps planned, windows walked
    fresh: dict = {}
    earlier = memo if memo is not None else {}
    walk = lambda wins: _walk_windows(wins, start, weights, steps, radius, k_total, counter, stage, earlier, fresh)  # noqa: E731
    windows, walked = yield from _walk_andgrow(plan, walk, tolerance, tuple(boundary.shape))
    plan.windows, plan.walked = windows, counter[2]
    plan.reused = sum(key in earlier for key in fresh)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    return _full_resolution_argmax(windows, walked, image_shape), plan


#: window plans a ``plans`` dict of :func:`iter_instance_walk` keeps
PLANS_KEPT = 4


def _planned(start: np.ndarray, clusters: np.ndarray, tolerance: float, margin: int, plans: dict | None) -> WalkPlan:
    """:func:`plan_windows`, taken from ``plans`` when it holds the plan of the same inputs (a fresh copy)."""
    if plans is None:
        return plan_windows(start, clusters, tolerance, margin)
    digest = hashlib.blake2b(digest_size=16)
    for array in (start, clusters):
        array = np.ascontiguousarray(array)
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(array.data)
    key = (digest.digest(), float(tolerance), int(margin))
    if key not in plans:
        while len(plans) >= PLANS_KEPT:
            del plans[next(iter(plans))]
        plans[key] = plan_windows(start, clusters, tolerance, margin)
    kept = plans[key]
    return WalkPlan(planes=kept.planes, windows=list(kept.windows), grid_cells=kept.grid_cells)


def _walk_andgrow(plan: WalkPlan, walk, tolerance: float, shape: tuple[int, int]) -> StepGenerator[tuple[list[Window], list[torch.Tensor]]]:
    """Walk the plan's windows, then grow and walk again those that leak, until none does."""
    windows = plan.windows
    walked = yield from walk(windows)
    while True:
        level = tolerance * max(float(part.max()) for part in walked)
        small = [i for i, (win, part) in enumerate(zip(windows, walked)) if win.area < plan.grid_cells and leaks(win, part, level, shape)]
        if not small:
            return windows, walked
        plan.rounds += 1
        plan.grown += len(small)
        pairs, redo = regrow(windows, walked, small, shape)
        again = yield from walk(redo)
        pairs += list(zip(redo, again))
        pairs.sort(key=lambda pair: (pair[0].plane, pair[0].y0, pair[0].x0))
        windows, walked = [p[0] for p in pairs], [p[1] for p in pairs]


def instance_walk_argmax(*args, progress: Callable[[Step], None] | None = None, **kwargs) -> tuple[Argmax | None, WalkPlan]:
    """:func:`iter_instance_walk` run to the end; ``progress(step)`` as the steps advance."""
    return run_steps(iter_instance_walk(*args, **kwargs), progress)
