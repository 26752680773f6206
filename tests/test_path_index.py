"""Pairs, paths, affinities and pair labels (napari_irnet.pipeline.path_index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_irnet.pipeline.path_index import PathIndex, boundary_to_affinity, displacement_targets, pair_labels, pair_values, path_points, search_directions


def brute_force_affinity(boundary: np.ndarray, radius: int) -> np.ndarray:
    """(D, n_src) affinities by looping over every pair and path point."""
    h, w = boundary.shape
    rf = radius - 1
    out = []
    for direction in search_directions(radius):
        path = path_points(direction)
        row = [
            1.0 - max(boundary[y + py, x + px] for py, px in path)
            for y in range(h - rf)
            for x in range(rf, w - rf)
        ]
        out.append(row)
    return np.asarray(out)


@pytest.mark.parametrize(("radius", "count"), [(5, 34), (10, 152)])
def test_number_of_forward_directions(radius, count):
    directions = search_directions(radius)
    assert directions.shape == (count, 2)
    assert len({tuple(d) for d in directions.tolist()}) == count


@pytest.mark.parametrize("radius", [5, 10])
def test_directions_are_the_forward_half_disc_grouped_by_path_length(radius):
    directions = search_directions(radius).tolist()
    expected = {(0, x) for x in range(1, radius)} | {
        (y, x)
        for y in range(1, radius)
        for x in range(-radius + 1, radius)
        if x * x + y * y < radius * radius
    }
    assert set(map(tuple, directions)) == expected
    lengths = [len(path_points(d)) for d in directions]
    assert lengths == sorted(lengths)
    # within a group of equal length: enumeration order (y, then x ascending,
    # the y = 0 row first)
    for length in set(lengths):
        group = [tuple(d) for d, n in zip(directions, lengths, strict=True) if n == length]
        assert group == sorted(group)


def test_radius_5_grouped_order_starts_like_the_reference():
    assert search_directions(5)[:10].tolist() == [
        [0, 1], [1, 0], [0, 2], [2, 0], [0, 3], [1, -1], [1, 1], [3, 0], [0, 4], [4, 0],
    ]  # fmt: skip


def test_path_of_3_4():
    assert path_points((3, 4)).tolist() == [
        [3, 4], [2, 4], [3, 3], [2, 3], [2, 2], [1, 2], [1, 1], [0, 1], [1, 0], [0, 0],
    ]  # fmt: skip


@pytest.mark.parametrize("direction", [(0, 1), (1, -1), (2, -3), (4, 1), (9, -4)])
def test_path_starts_at_destination_and_ends_at_source(direction):
    path = path_points(direction)
    assert tuple(path[0]) == direction
    assert tuple(path[-1]) == (0, 0)
    total = np.abs(path).sum(axis=1)
    assert np.all(np.diff(total) <= 0)


def test_straight_paths():
    assert path_points((0, 3)).tolist() == [[0, 3], [0, 2], [0, 1], [0, 0]]
    assert path_points((2, 0)).tolist() == [[2, 0], [1, 0], [0, 0]]


def test_path_index_geometry():
    index = PathIndex(10, (128, 128))
    assert index.radius_floor == 9
    assert index.src_shape == (119, 110)
    assert index.n_src == 13090
    assert index.dst_indices.shape == (152, 13090)
    assert sum(g.shape[0] for g in index.path_groups) == 152
    assert [g.shape[1] for g in index.path_groups][0] == 2
    assert [g.shape[1] for g in index.path_groups][-1] == 22
    # destinations = sources shifted by each direction, all inside the grid
    ys, xs = np.divmod(index.src_indices, 128)
    assert ys.min() == 0 and ys.max() == 118 and xs.min() == 9 and xs.max() == 118
    for d, (dy, dx) in enumerate(index.directions):
        dst_y, dst_x = np.divmod(index.dst_indices[d], 128)
        np.testing.assert_array_equal(dst_y, ys + dy)
        np.testing.assert_array_equal(dst_x, xs + dx)


def test_too_small_grid_is_rejected():
    with pytest.raises(ValueError):
        PathIndex(5, (4, 20))


def test_affinity_matches_brute_force_on_random_boundary():
    rng = np.random.default_rng(0)
    boundary = rng.random((11, 14))
    index = PathIndex(5, boundary.shape)
    got = boundary_to_affinity(torch.from_numpy(boundary)[None], index)
    assert got.shape == (1, 34, index.n_src)
    np.testing.assert_allclose(got[0].numpy(), brute_force_affinity(boundary, 5), atol=1e-12)


def test_vertical_wall_cuts_exactly_the_crossing_pairs():
    h, w, wall = 12, 20, 9
    boundary = torch.zeros(2, h, w)
    boundary[:, :, wall] = 1.0
    index = PathIndex(5, (h, w))
    affinity = boundary_to_affinity(boundary, index)
    src_x = index.src_indices % w
    dst_x = index.dst_indices % w
    touches = (np.minimum(src_x, dst_x) <= wall) & (wall <= np.maximum(src_x, dst_x))
    expected = torch.from_numpy(np.where(touches, 0.0, 1.0)).float()
    assert torch.equal(affinity[0], expected) and torch.equal(affinity[1], expected)
    assert 0 < touches.sum() < touches.size
    # zero boundary: everything connected
    assert torch.all(boundary_to_affinity(torch.zeros(1, 1, h, w), index) == 1)


def test_affinity_is_differentiable_and_both_code_paths_agree():
    index = PathIndex(5, (10, 12))
    logits = torch.randn(2, 1, 10, 12, requires_grad=True)
    affinity = boundary_to_affinity(torch.sigmoid(logits), index)  # gathered
    with torch.no_grad():
        sliced = boundary_to_affinity(torch.sigmoid(logits), index)  # running maxima
    assert torch.equal(affinity.detach(), sliced)
    affinity.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    # the gradient of a single pair goes to the arg-max of its path only
    boundary = torch.zeros(1, 10, 12, requires_grad=True)
    with torch.no_grad():
        boundary[0, 3, 6] = 0.7
    d = index.directions.tolist().index([0, 1])
    s = 3 * index.src_shape[1] + (5 - index.radius_floor)  # pair (3, 5) -> (3, 6)
    boundary_to_affinity(boundary, index)[0, d, s].backward()
    expected = torch.zeros(1, 10, 12)
    expected[0, 3, 6] = -1.0
    assert torch.equal(boundary.grad, expected)


def test_pair_values_match_flat_indices():
    index = PathIndex(5, (9, 13))
    field = torch.arange(2 * 3 * 9 * 13, dtype=torch.float64).reshape(2, 3, 9, 13)
    src, dst = pair_values(field, index)
    flat = field.flatten(2)
    assert src.shape == (2, 3, 1, index.n_src) and dst.shape == (2, 3, 34, index.n_src)
    assert torch.equal(src[:, :, 0], flat[:, :, torch.from_numpy(index.src_indices)])
    assert torch.equal(dst, flat[:, :, torch.from_numpy(index.dst_indices)])


def test_pair_labels_on_constructed_grid():
    h, w = 10, 20
    seeds = np.zeros((h, w), np.uint8)  # background on the left
    seeds[:, 8:14] = 1  # class 1 in the middle
    seeds[:, 14:] = 2  # class 2 on the right
    seeds[:2, :] = 255  # ignored top rows
    index = PathIndex(5, (h, w))
    bg_pos, fg_pos, neg = pair_labels(seeds, index)
    assert bg_pos.shape == fg_pos.shape == neg.shape == (1, 34, index.n_src)
    assert bg_pos.dtype == torch.bool

    flat = seeds.ravel().astype(int)
    a = flat[index.src_indices][None, :]
    b = flat[index.dst_indices]
    valid = (a != 255) & (b != 255)
    np.testing.assert_array_equal(bg_pos[0].numpy(), valid & (a == b) & (a == 0))
    np.testing.assert_array_equal(fg_pos[0].numpy(), valid & (a == b) & (a > 0))
    np.testing.assert_array_equal(neg[0].numpy(), valid & (a != b))
    # each valid pair is in exactly one set; ignored pairs in none
    total = bg_pos.int() + fg_pos.int() + neg.int()
    np.testing.assert_array_equal(total[0].numpy(), valid.astype(int))
    assert bg_pos.any() and fg_pos.any() and neg.any() and not valid.all()

    # a specific pair: source (5, 7) (background), direction (0, 1) -> (5, 8) class 1
    d = index.directions.tolist().index([0, 1])
    s = 5 * index.src_shape[1] + (7 - index.radius_floor)
    assert neg[0, d, s] and not fg_pos[0, d, s] and not bg_pos[0, d, s]
    # a batch of two grids as a tensor gives the same sets per item
    batched = pair_labels(torch.from_numpy(np.stack([seeds, seeds])), index)
    assert torch.equal(batched[1][1], fg_pos[0])


def test_displacement_targets():
    index = PathIndex(10, (40, 40))
    target = displacement_targets(index)
    assert target.shape == (2, 152, 1) and target.dtype == torch.float32
    np.testing.assert_array_equal(target[:, :, 0].T.numpy(), index.directions)
