"""IRNet affinity and displacement losses (napari_irnet.training.losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_irnet.pipeline.path_index import PathIndex, pair_labels, path_points
from napari_irnet.training.losses import affinity_displacement_loss, centroid_displacement_loss

H, W = 16, 30
#: column ranges: class 1 | ignore | background | ignore | class 2
REGIONS = {"fg1": (0, 9), "bg": (10, 20), "fg2": (21, 30)}
WALLS = (9, 20)


def seed_grid() -> np.ndarray:
    grid = np.full((H, W), 255, np.uint8)
    grid[:, slice(*REGIONS["fg1"])] = 1
    grid[:, slice(*REGIONS["bg"])] = 0
    grid[:, slice(*REGIONS["fg2"])] = 2
    return grid


def ideal_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary logits +-30 on the walls, and D(p) = centroid - p in each instance."""
    logits = torch.full((1, 1, H, W), -30.0)
    for col in WALLS:
        logits[..., col] = 30.0
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    disp = torch.zeros(1, 2, H, W)
    for name in ("fg1", "fg2"):
        lo, hi = REGIONS[name]
        cy, cx = (H - 1) / 2, (lo + hi - 1) / 2
        disp[0, 0, :, lo:hi] = cy - yy[:, lo:hi]
        disp[0, 1, :, lo:hi] = cx - xx[:, lo:hi]
    return logits, disp


@pytest.fixture(scope="module")
def setup():
    index = PathIndex(5, (H, W))
    return index, pair_labels(seed_grid(), index)


def test_keys_and_ideal_outputs_give_zero_loss(setup):
    index, (bg_pos, fg_pos, neg) = setup
    logits, disp = ideal_outputs()
    losses = affinity_displacement_loss(logits, disp, bg_pos, fg_pos, neg, index)
    assert set(losses) == {"pos", "neg", "dp_fg", "dp_bg", "total"}
    for value in losses.values():
        assert value.shape == () and torch.isfinite(value)
        assert abs(float(value)) < 1e-4


def test_reductions_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    h, w = 11, 13
    seeds = rng.choice([0, 1, 2, 255], size=(h, w), p=[0.3, 0.3, 0.3, 0.1]).astype(np.uint8)
    index = PathIndex(5, (h, w))
    logits = torch.from_numpy(rng.normal(size=(1, 1, h, w)))
    disp = torch.from_numpy(rng.normal(size=(1, 2, h, w)))
    got = affinity_displacement_loss(logits, disp, *pair_labels(seeds, index), index)

    boundary = 1 / (1 + np.exp(-logits[0, 0].numpy()))
    d = disp[0].numpy()
    sums = dict.fromkeys(["bg", "fg", "neg", "dfg", "dbg", "nbg", "nfg", "nneg"], 0.0)
    rf = index.radius_floor
    for dy, dx in index.directions.tolist():
        path = path_points((dy, dx))
        for y in range(h - rf):
            for x in range(rf, w - rf):
                a, b = seeds[y, x], seeds[y + dy, x + dx]
                if a == 255 or b == 255:
                    continue
                aff = 1 - max(boundary[y + py, x + px] for py, px in path)
                pair = d[:, y, x] - d[:, y + dy, x + dx]
                if a != b:
                    sums["neg"] += -math.log(1 + 1e-5 - aff)
                    sums["nneg"] += 1
                elif a == 0:
                    sums["bg"] += -math.log(aff + 1e-5)
                    sums["dbg"] += np.abs(pair).sum()
                    sums["nbg"] += 1
                else:
                    sums["fg"] += -math.log(aff + 1e-5)
                    sums["dfg"] += np.abs(pair - [dy, dx]).sum()
                    sums["nfg"] += 1
    pos = sums["bg"] / (sums["nbg"] + 1e-5) / 2 + sums["fg"] / (sums["nfg"] + 1e-5) / 2
    neg = sums["neg"] / (sums["nneg"] + 1e-5)
    dp_fg = sums["dfg"] / (2 * sums["nfg"] + 1e-5)
    dp_bg = sums["dbg"] / (2 * sums["nbg"] + 1e-5)
    expected = {
        "pos": pos,
        "neg": neg,
        "dp_fg": dp_fg,
        "dp_bg": dp_bg,
        "total": (pos + neg) / 2 + (dp_fg + dp_bg) / 2,
    }
    for key, value in expected.items():
        assert float(got[key]) == pytest.approx(value, rel=1e-9), key


def test_zero_displacement_costs_the_mean_direction_length(setup):
    index, (bg_pos, fg_pos, neg) = setup
    logits, _ = ideal_outputs()
    losses = affinity_displacement_loss(logits, torch.zeros(1, 2, H, W), bg_pos, fg_pos, neg, index)
    length = torch.from_numpy(np.abs(index.directions).sum(1)).float()[None, :, None]
    expected = (fg_pos * length).sum() / (2 * fg_pos.sum())
    assert float(losses["dp_fg"]) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(losses["dp_bg"])) < 1e-6


def test_displacement_weight_drops_a_samples_pairs_from_the_displacement_losses(setup):
    index, (bg_pos, fg_pos, neg) = setup
    logits, ideal = ideal_outputs()
    rng = torch.Generator().manual_seed(0)
    wrong = torch.randn(1, 2, H, W, generator=rng) * 3
    # sample 0 has the ideal field (zero displacement loss), sample 1 a random one
    two = [torch.cat([t, t]) for t in (bg_pos, fg_pos, neg)]
    disp = torch.cat([ideal, wrong])
    both = affinity_displacement_loss(torch.cat([logits, logits]), disp, *two, index)
    assert float(both["dp_fg"]) > 0.1 and float(both["dp_bg"]) > 0.1
    same = affinity_displacement_loss(torch.cat([logits, logits]), disp, *two, index, torch.ones(2))
    for key in both:
        assert float(same[key]) == pytest.approx(float(both[key]), rel=1e-6), key
    only0 = affinity_displacement_loss(torch.cat([logits, logits]), disp, *two, index, torch.tensor([1.0, 0.0]))
    assert abs(float(only0["dp_fg"])) < 1e-4 and abs(float(only0["dp_bg"])) < 1e-4
    # the affinity losses do not depend on the weights
    for key in ("pos", "neg"):
        assert float(only0[key]) == pytest.approx(float(both[key]), rel=1e-6), key
    disp.requires_grad_()
    affinity_displacement_loss(torch.cat([logits, logits]), disp, *two, index, torch.tensor([1.0, 0.0]))["total"].backward()
    assert float(disp.grad[1].abs().sum()) == 0.0
    # a fractional weight gives the weighted mean of the two samples' pair errors
    single = [affinity_displacement_loss(logits, d, bg_pos, fg_pos, neg, index) for d in (ideal, wrong)]
    half = affinity_displacement_loss(torch.cat([logits, logits]), disp.detach(), *two, index, torch.tensor([1.0, 0.5]))
    n = float(fg_pos.sum())
    expected = (float(single[0]["dp_fg"]) * n + 0.5 * float(single[1]["dp_fg"]) * n) / (1.5 * n)
    assert float(half["dp_fg"]) == pytest.approx(expected, rel=1e-4)


def test_gradients_flow(setup):
    index, labels = setup
    logits = torch.zeros(1, 1, H, W, requires_grad=True)
    disp = torch.zeros(1, 2, H, W, requires_grad=True)
    affinity_displacement_loss(logits, disp, *labels, index)["total"].backward()
    for tensor in (logits, disp):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_optimisation_separates_two_instances(setup):
    """Free boundary logits and displacements, optimised with Adam, reach ~0 loss.

    The logits start high ("everything is boundary"): starting from 0 the max
    along a negative pair's path is a tie that may pick a pixel inside a region,
    which then takes the whole negative gradient and the wall never rises (a
    local optimum that a network's smooth output avoids, free pixels do not).
    """
    torch.manual_seed(0)
    index, labels = setup
    logits = torch.full((1, 1, H, W), 2.0, requires_grad=True)
    disp = torch.randn(1, 2, H, W).requires_grad_()
    optimiser = torch.optim.Adam([logits, disp], lr=0.3)
    steps = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1 - i / steps)
    for _ in range(steps):
        optimiser.zero_grad()
        losses = affinity_displacement_loss(logits, disp, *labels, index)
        losses["total"].backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        losses = affinity_displacement_loss(logits, disp, *labels, index)
    assert float(losses["total"]) < 0.05
    assert float(losses["dp_fg"]) < 0.01 and float(losses["dp_bg"]) < 0.01
    boundary = torch.sigmoid(logits.detach())[0, 0]
    for col in WALLS:  # the unlabelled columns between the regions became boundary
        assert float(boundary[:, col].min()) > 0.9
    # pixels in at least one pair (a few near the corners are in none)
    covered = np.zeros(H * W, bool)
    covered[index.src_indices] = covered[index.dst_indices.ravel()] = True
    covered = torch.from_numpy(covered.reshape(H, W))
    for lo, hi in REGIONS.values():  # and the regions are free of it
        assert float(boundary[:, lo:hi][covered[:, lo:hi]].max()) < 0.1
    # inside each instance all pixels point at one common centroid (up to the
    # constant the loss cannot see); background displacements are constant
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    target = disp.detach()[0] + torch.stack([yy, xx])
    for name in ("fg1", "fg2"):
        lo, hi = REGIONS[name]
        inside = target[:, :, lo:hi][:, covered[:, lo:hi]]
        assert float(inside.std(dim=1).max()) < 0.1
    lo, hi = REGIONS["bg"]
    inside = disp.detach()[0, :, :, lo:hi][:, covered[:, lo:hi]]
    assert float(inside.std(dim=1).max()) < 0.1


def test_centroid_loss_is_zero_at_the_exact_field_and_the_mean_error_elsewhere():
    from napari_irnet.training.targets import displacement_target

    rng = np.random.default_rng(3)
    grids = []
    for _ in range(2):  # label 1 in both images: two different instances
        g = np.zeros((12, 14), np.int64)
        g[1:6, 2:9] = 1
        g[7:11, int(rng.integers(0, 5)) :][:, :6] = 2
        grids.append(g)
    grids[1][0, :] = 255  # ignored cells count for nothing
    labels = torch.from_numpy(np.stack(grids))
    exact = np.stack([displacement_target(np.where(g == 255, 0, g), stride=1)[0] for g in grids])
    exact_t = torch.from_numpy(exact)
    assert float(centroid_displacement_loss(exact_t, labels)) == pytest.approx(0.0, abs=1e-6)
    g = np.stack(grids)
    inside, background = (g > 0) & (g != 255), g == 0
    # zero field: half the mean L1 length of the targets inside instances (background targets are 0)
    expected = np.abs(exact).sum(1)[inside].mean() / 2
    assert float(centroid_displacement_loss(torch.zeros_like(exact_t), labels)) == pytest.approx(expected, rel=1e-6)
    shifted = exact_t.clone()
    shifted[1, 0, 3, 3] += 2.0  # one wrong cell inside an instance of the second image
    assert grids[1][3, 3] == 1
    assert float(centroid_displacement_loss(shifted, labels)) == pytest.approx(2.0 / inside.sum() / 2, rel=1e-5)
    shifted = exact_t.clone()
    shifted[0, 1, 0, 0] -= 3.0  # one wrong background cell
    assert float(centroid_displacement_loss(shifted, labels)) == pytest.approx(3.0 / background.sum() / 2, rel=1e-5)
    assert float(centroid_displacement_loss(exact_t, torch.where(labels > 0, 255, labels))) == 0.0  # background only
    assert float(centroid_displacement_loss(exact_t, torch.full_like(labels, 255))) == 0.0
