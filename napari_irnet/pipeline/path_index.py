"""Pairs of pixels within a radius and the discrete paths between them.

IRNet (Ahn, Cho and Kwak, "Weakly Supervised Learning of Instance
Segmentation with Inter-pixel Relations", CVPR 2019) relates every pixel of
the stride-4 feature grid to the pixels within a radius ``r``.  The affinity
of a pair is ``1 - max(boundary)`` along a discretised line segment between
the two pixels.  This module enumerates those pairs and paths with the same
conventions as the reference implementation (jiwoon-ahn/irn,
``misc/indexing.py`` ``PathIndex``), so that direction orders, source ranges
and path points match it one for one:

* directions: the forward half of the disc, ``(0, x)`` for ``x = 1..r-1`` and
  ``(y, x)`` for ``y = 1..r-1``, ``x = -(r-1)..r-1`` with ``x² + y² < r²``,
  then *grouped by path length* (ascending, stable); that grouped order is the
  order used everywhere (labels, losses, displacement targets);
* path of a direction ``δ``: the integer points of the bounding box of
  ``(0, 0)``–``δ`` whose squared distance to the line through both is < 1,
  sorted by decreasing ``|y| + |x|`` (element 0 is the destination);
* sources: rows ``[0, h - rf)`` and columns ``[rf, w - rf)`` of the grid, with
  ``rf = ceil(r) - 1``, so that every forward destination lies in the grid.

Path maxima: when a gradient is needed, one flat gather + max per group of
directions with equal path length (its backward is a single ``index_add``,
like the reference's ``index_select`` + max-pool); otherwise running maxima of
shifted views, with no temporaries.  Pair endpoints are gathered with the flat
``src_indices`` / ``dst_indices``.

Shapes use ``B`` for the batch, ``D`` for the number of forward directions
(34 at radius 5, 152 at radius 10) and ``n_src = (h - rf) * (w - 2 rf)`` for the
number of source pixels.  All coordinates are ``(y, x)`` in grid cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "PathIndex",
    "boundary_to_affinity",
    "displacement_targets",
    "max_along_paths",
    "pair_labels",
    "pair_values",
    "path_points",
    "search_directions",
]

IGNORE_LABEL = 255


def _enumerated_directions(radius: int) -> list[tuple[int, int]]:
    """The forward half-disc in the reference's enumeration order."""
    r = int(radius)
    directions = [(0, x) for x in range(1, r)]
    directions += [
        (y, x) for y in range(1, r) for x in range(-r + 1, r) if x * x + y * y < r * r
    ]
    return directions


def path_points(direction: Sequence[int]) -> np.ndarray:
    """Grid points of the discrete segment from ``(0, 0)`` to ``direction``.

    Parameters
    ----------
    direction : pair of int
        ``(dy, dx)`` of the destination relative to the source, in grid cells.

    Returns
    -------
    numpy.ndarray
        ``(P, 2)`` int64 array of ``(y, x)`` points: all integer points of the
        bounding box of the two end points whose squared perpendicular distance
        to the line through them is < 1, both end points included, sorted by
        decreasing ``|y| + |x|`` (ties keep row-major order).  Element 0 is the
        destination and the last element is ``(0, 0)``.

    Examples
    --------
    >>> path_points((3, 4)).tolist()
    [[3, 4], [2, 4], [3, 3], [2, 3], [2, 2], [1, 2], [1, 1], [0, 1], [1, 0], [0, 0]]
    """
    dy, dx = int(direction[0]), int(direction[1])
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        raise ValueError("direction must not be (0, 0)")
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    # squared distance to the line = (dy*x - dx*y)^2 / |δ|^2 < 1, in integers
    on_path = (dy * xx - dx * yy) ** 2 < length_sq
    points = np.stack([yy[on_path], xx[on_path]], axis=1).astype(np.int64)
    order = np.argsort(-(np.abs(points[:, 0]) + np.abs(points[:, 1])), kind="stable")
    return points[order]


def grouped_paths(radius: int) -> list[np.ndarray]:
    """Paths of all forward directions grouped by length, shortest first.

    Returns a list of ``(n_g, P_g, 2)`` int64 arrays; ``[g][:, 0]`` are the
    destinations of group ``g``.
    """
    by_length: dict[int, list[np.ndarray]] = {}
    for direction in _enumerated_directions(radius):
        points = path_points(direction)
        by_length.setdefault(len(points), []).append(points)
    return [np.stack(by_length[n]) for n in sorted(by_length)]


def search_directions(radius: int) -> np.ndarray:
    """Forward directions of radius ``radius`` in the reference's grouped order.

    Parameters
    ----------
    radius : int
        Pairs are formed with every pixel at Euclidean distance < ``radius``.

    Returns
    -------
    numpy.ndarray
        ``(D, 2)`` int64 ``(dy, dx)`` offsets: the forward half of the disc
        (see the module docstring) re-ordered by path length, ascending, with
        ties in enumeration order.  ``D = 34`` at radius 5, ``152`` at radius 10.
    """
    if int(radius) < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    return np.concatenate([group[:, 0] for group in grouped_paths(radius)], axis=0)


@dataclass(eq=False)
class PathIndex:
    """Pairs of a ``(h, w)`` grid within ``radius``, and their paths.

    Parameters
    ----------
    radius : int
        Radius of the pairs (5 at inference, 10 in training in the reference).
    shape : tuple of int
        ``(h, w)`` of the grid (stride-4 feature map) in cells.

    Attributes
    ----------
    radius_floor : int
        ``rf = ceil(radius) - 1``, the largest ``|dx|`` and ``dy`` of a direction.
    directions : numpy.ndarray
        ``(D, 2)`` int64 ``(dy, dx)`` in grouped order (:func:`search_directions`).
    path_groups : list of numpy.ndarray
        Paths grouped by length: ``(n_g, P_g, 2)`` int64 arrays of ``(y, x)``
        points relative to the source; ``sum(n_g) = D``, same order as
        ``directions``.
    src_shape : tuple of int
        ``(h - rf, w - 2 rf)``: the block of source pixels, whose top-left
        corner is grid cell ``(0, rf)``.
    src_indices : numpy.ndarray
        ``(n_src,)`` int64 flat (row-major) grid indices of the sources.
    dst_indices : numpy.ndarray
        ``(D, n_src)`` int64 flat grid indices of the destinations.
    """

    radius: int
    shape: tuple[int, int]
    radius_floor: int = field(init=False)
    directions: np.ndarray = field(init=False, repr=False)
    path_groups: list[np.ndarray] = field(init=False, repr=False)
    src_shape: tuple[int, int] = field(init=False)
    src_indices: np.ndarray = field(init=False, repr=False)
    dst_indices: np.ndarray = field(init=False, repr=False)
    _torch_indices: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.radius = int(self.radius)
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.radius_floor = int(math.ceil(self.radius)) - 1
        self.path_groups = grouped_paths(self.radius)
        self.directions = np.concatenate([g[:, 0] for g in self.path_groups], axis=0)
        h, w = self.shape
        rf = self.radius_floor
        self.src_shape = (h - rf, w - 2 * rf)
        if min(self.src_shape) < 1:
            raise ValueError(f"grid {self.shape} too small for radius {self.radius}")
        hs, ws = self.src_shape
        rows, cols = np.meshgrid(np.arange(hs), np.arange(rf, rf + ws), indexing="ij")
        self.src_indices = (rows * w + cols).ravel().astype(np.int64)
        offsets = self.directions[:, 0] * w + self.directions[:, 1]
        self.dst_indices = self.src_indices[None, :] + offsets[:, None]

    def torch_indices(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``src_indices`` ``(n_src,)`` and ``dst_indices`` ``(D, n_src)`` as int64
        tensors on ``device`` (cached per device)."""
        key = str(torch.device(device))
        if key not in self._torch_indices:
            self._torch_indices[key] = (
                torch.from_numpy(self.src_indices).to(device),
                torch.from_numpy(self.dst_indices).to(device),
            )
        return self._torch_indices[key]

    @property
    def n_directions(self) -> int:
        """Number ``D`` of forward directions."""
        return int(self.directions.shape[0])

    @property
    def n_src(self) -> int:
        """Number of source pixels ``(h - rf) * (w - 2 rf)``."""
        return self.src_shape[0] * self.src_shape[1]


def _as_batched_grid(tensor: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    """Accept ``(B, h, w)`` or ``(B, 1, h, w)``; return ``(B, h, w)``."""
    if tensor.dim() == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 3 or tuple(tensor.shape[-2:]) != tuple(shape):
        raise ValueError(f"{name} must be (B, {shape[0]}, {shape[1]}), got {tuple(tensor.shape)}")
    return tensor


def _window(field: torch.Tensor, origin: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """View ``field[..., oy:oy+hs, ox:ox+ws]`` (no copy)."""
    (oy, ox), (hs, ws) = origin, size
    return field[..., oy : oy + hs, ox : ox + ws]


def _path_offsets(group: np.ndarray, origin: tuple[int, int], width: int) -> np.ndarray:
    """Flat offsets ``(n_g, P_g)`` of the path points of a group, from the origin."""
    return (origin[0] + group[..., 0]) * width + origin[1] + group[..., 1]


def _gathered_max(
    field: torch.Tensor,
    path_groups: Sequence[np.ndarray],
    origin: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """``max_along_paths`` by flat gathers: the backward pass is one
    ``index_add`` per group, as the reference's ``index_select`` + max-pool."""
    batch, _, width = field.shape
    hs, ws = size
    flat = field.reshape(batch, -1)
    rows = torch.arange(hs, device=field.device).view(hs, 1) * width
    sources = (rows + torch.arange(ws, device=field.device)).view(1, 1, -1)
    per_group = []
    for group in path_groups:
        offsets = torch.as_tensor(_path_offsets(group, origin, width), device=field.device)
        index = (offsets[:, :, None] + sources).view(-1)  # (n_g * P_g * n_src,)
        values = flat.index_select(1, index).view(batch, *group.shape[:2], hs * ws)
        per_group.append(values.max(dim=2).values)
    return torch.cat(per_group, dim=1).view(batch, -1, hs, ws)


def _sliced_max(
    field: torch.Tensor,
    path_groups: Sequence[np.ndarray],
    origin: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """``max_along_paths`` by running maxima of shifted views: no index
    tensors and no copies beyond the ``(B, D, hs, ws)`` output (inference)."""
    directions = [path for group in path_groups for path in group]
    out = field.new_empty(field.shape[0], len(directions), *size)
    for d, path in enumerate(directions):
        points = [(origin[0] + int(py), origin[1] + int(px)) for py, px in path]
        torch.maximum(_window(field, points[0], size), _window(field, points[1], size), out=out[:, d])
        for point in points[2:]:
            torch.maximum(out[:, d], _window(field, point, size), out=out[:, d])
    return out


def max_along_paths(
    field: torch.Tensor,
    path_groups: Sequence[np.ndarray],
    origin: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """Maximum of a map along the path of every direction from every source.

    Parameters
    ----------
    field : torch.Tensor
        ``(B, H, W)`` map (e.g. boundary probabilities).
    path_groups : list of numpy.ndarray
        ``(n_g, P_g, 2)`` path points per length group (``PathIndex.path_groups``).
    origin : tuple of int
        ``(oy, ox)``: grid cell of the first source.
    size : tuple of int
        ``(hs, ws)``: block of sources; every path point of every source must
        fall inside ``field``.

    Returns
    -------
    torch.Tensor
        ``(B, D, hs, ws)``: ``out[b, d, i, j] = max_p field[b, oy+i+py, ox+j+px]``
        over the points ``p`` of path ``d``.  Differentiable: when ``field``
        requires a gradient the points are gathered per length group and
        max-pooled (the gradient goes to the arg-max, as in the reference);
        otherwise running maxima of shifted views are used, without temporaries.
    """
    if field.requires_grad and torch.is_grad_enabled():
        return _gathered_max(field, path_groups, origin, size)
    return _sliced_max(field, path_groups, origin, size)


def boundary_to_affinity(boundary: torch.Tensor, path_index: PathIndex) -> torch.Tensor:
    """Affinities of all pairs from a boundary map: ``1 - max(boundary on path)``.

    Parameters
    ----------
    boundary : torch.Tensor
        ``(B, h, w)`` (or ``(B, 1, h, w)``) boundary probabilities in [0, 1] on
        the grid of ``path_index``.
    path_index : PathIndex

    Returns
    -------
    torch.Tensor
        ``(B, D, n_src)`` affinities in [0, 1], directions in grouped order,
        sources in row-major order of the source block.  Differentiable.
    """
    boundary = _as_batched_grid(boundary, path_index.shape, "boundary")
    rf = path_index.radius_floor
    path_max = max_along_paths(boundary, path_index.path_groups, (0, rf), path_index.src_shape)
    return 1.0 - path_max.flatten(2)


def pair_values(field: torch.Tensor, path_index: PathIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of a per-pixel field at the sources and destinations of all pairs.

    Parameters
    ----------
    field : torch.Tensor
        ``(B, C, h, w)`` on the grid of ``path_index``.
    path_index : PathIndex

    Returns
    -------
    src : torch.Tensor
        ``(B, C, 1, n_src)`` values at the sources.
    dst : torch.Tensor
        ``(B, C, D, n_src)`` values at the destination of each direction.
    """
    if field.dim() != 4 or tuple(field.shape[-2:]) != path_index.shape:
        raise ValueError(f"field must be (B, C, {path_index.shape}), got {tuple(field.shape)}")
    src_index, dst_index = path_index.torch_indices(field.device)
    flat = field.flatten(2)
    src = flat.index_select(2, src_index).unsqueeze(2)
    dst = flat.index_select(2, dst_index.view(-1)).view(*flat.shape[:2], *dst_index.shape)
    return src, dst


def pair_labels(
    seed_grid: np.ndarray | torch.Tensor, path_index: PathIndex
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive and negative pair sets from a seed label grid.

    Follows the reference's ``GetAffinityLabelFromIndices``: a pair is valid
    when neither label is ``255``; "equal" means the same class.

    Parameters
    ----------
    seed_grid : numpy.ndarray or torch.Tensor
        ``(B, h, w)`` (or ``(h, w)``) integer labels: 0 background, 1..C
        classes, 255 ignore.
    path_index : PathIndex

    Returns
    -------
    bg_pos, fg_pos, neg : torch.Tensor
        ``(B, D, n_src)`` bool: valid ∧ equal ∧ label = 0; valid ∧ equal ∧
        label > 0; valid ∧ different.
    """
    grid = seed_grid if torch.is_tensor(seed_grid) else torch.from_numpy(np.asarray(seed_grid))
    if grid.dim() == 2:
        grid = grid[None]
    grid = _as_batched_grid(grid.long(), path_index.shape, "seed_grid")
    src, dst = pair_values(grid[:, None], path_index)
    src, dst = src[:, 0], dst[:, 0]
    valid = (src != IGNORE_LABEL) & (dst != IGNORE_LABEL)
    equal = src == dst
    bg_pos = valid & equal & (src == 0)
    fg_pos = valid & equal & (src > 0)
    neg = valid & ~equal
    return bg_pos, fg_pos, neg


def displacement_targets(
    path_index: PathIndex, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Target of ``D(src) - D(dst)`` for a same-instance pair: the direction.

    If both pixels point at a common centroid ``c`` (``D(p) = c - p``) then
    ``D(src) - D(src + δ) = δ``.

    Returns
    -------
    torch.Tensor
        ``(2, D, 1)``: ``(dy, dx)`` of each direction in grid cells, grouped
        order; broadcasts against ``(B, 2, D, n_src)``.
    """
    return torch.as_tensor(path_index.directions.T.copy(), dtype=dtype)[:, :, None]
