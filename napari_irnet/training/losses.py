"""Training losses of IRNet: inter-pixel affinity and displacement.

The definitions and reductions follow the reference implementation
(jiwoon-ahn/irn: ``net/resnet50_irn.py`` ``AffinityDisplacementLoss`` and the
reduction in ``step/train_irn.py``), described in Ahn, Cho and Kwak, CVPR 2019.

Per pair ``(i, j = i + δ)`` with affinity ``a = 1 - max(B on path)``:

* positive affinity loss ``-log(a + 1e-5)``, negative ``-log(1 + 1e-5 - a)``;
* pair displacement ``D(i) - D(j)``; its target is ``δ`` for foreground pairs
  (both point at one centroid) and ``0`` for background pairs.

Reductions (sums over batch, directions and sources):

* ``pos = bg/2 + fg/2`` with ``bg = Σ bg_pos·l_pos / (Σ bg_pos + 1e-5)`` and the
  same for ``fg``;
* ``neg = Σ neg·l_neg / (Σ neg + 1e-5)``;
* ``dp_fg = Σ fg_pos·|D(i)-D(j)-δ| / (2 Σ fg_pos + 1e-5)`` (summed over the two
  channels, hence the 2), ``dp_bg`` likewise with ``|D(i)-D(j)|`` on ``bg_pos``;
* ``total = (pos + neg)/2 + (dp_fg + dp_bg)/2``.

Labels that separate instances (ground truth, a person's corrections) also
give each pixel's displacement itself, not only the differences within
pairs: :func:`centroid_displacement_loss` regresses it to the vector to its
instance's centroid (0 on background). This direct target is our addition
for the human in the loop (DESIGN.md, "Human-in-the-loop training"), off by
default (``TrainParams.centroid_loss_weight``); the reference has only the
pair losses above.
"""

from __future__ import annotations

import torch

from ..pipeline.path_index import PathIndex, boundary_to_affinity, displacement_targets, pair_values

__all__ = ["affinity_displacement_loss", "centroid_displacement_loss"]

EPS = 1e-5


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``Σ values·mask / (scale·Σ mask + 1e-5)``; ``mask`` broadcasts to ``values``."""
    return torch.sum(values * mask) / (scale * torch.sum(mask) + EPS)


def affinity_displacement_loss(
    boundary_logits: torch.Tensor,
    displacement: torch.Tensor,
    bg_pos: torch.Tensor,
    fg_pos: torch.Tensor,
    neg: torch.Tensor,
    path_index: PathIndex,
    displacement_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The four IRNet losses and their total.

    Parameters
    ----------
    boundary_logits : torch.Tensor
        ``(B, 1, h, w)`` boundary logits on the stride-4 grid; the boundary
        probability is their sigmoid.
    displacement : torch.Tensor
        ``(B, 2, h, w)`` displacement field ``(dy, dx)`` in grid cells.
    bg_pos, fg_pos, neg : torch.Tensor
        ``(B, D, n_src)`` bool or float pair sets from
        :func:`~napari_irnet.pipeline.path_index.pair_labels`.
    path_index : PathIndex
        Pairs of the ``(h, w)`` grid (radius 10 in the reference's training).
    displacement_weight : torch.Tensor, optional
        ``(B,)`` weight of each sample's pairs in the two displacement losses
        (default: 1 for all, the reference). The losses stay weighted means
        over the pairs, so a sample of weight 0 leaves the displacement to the
        others (our addition: fine-tuning from corrections gives no say to
        weak relations that contradict them, see
        ``TrainParams.weak_displacement_weight``).

    Returns
    -------
    dict of str to torch.Tensor
        Scalars ``pos``, ``neg``, ``dp_fg``, ``dp_bg`` and ``total``.
    """
    dtype = boundary_logits.dtype
    bg_pos, fg_pos, neg = (m.to(dtype) for m in (bg_pos, fg_pos, neg))

    affinity = boundary_to_affinity(torch.sigmoid(boundary_logits), path_index)
    pos_pair_loss = -torch.log(affinity + EPS)
    neg_pair_loss = -torch.log(1.0 + EPS - affinity)
    pos = _masked_mean(pos_pair_loss, bg_pos) / 2 + _masked_mean(pos_pair_loss, fg_pos) / 2
    neg_loss = _masked_mean(neg_pair_loss, neg)

    src, dst = pair_values(displacement, path_index)
    pair_disp = src - dst  # (B, 2, D, n_src)
    target = displacement_targets(path_index, dtype=displacement.dtype).to(displacement.device)
    dp_fg_pairs, dp_bg_pairs = fg_pos, bg_pos
    if displacement_weight is not None:
        w = displacement_weight.to(device=displacement.device, dtype=dtype).view(-1, 1, 1)
        dp_fg_pairs, dp_bg_pairs = fg_pos * w, bg_pos * w
    dp_fg = _masked_mean(torch.abs(pair_disp - target), dp_fg_pairs[:, None], scale=2.0)
    dp_bg = _masked_mean(torch.abs(pair_disp), dp_bg_pairs[:, None], scale=2.0)

    total = (pos + neg_loss) / 2 + (dp_fg + dp_bg) / 2
    return {"pos": pos, "neg": neg_loss, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}


def centroid_displacement_loss(displacement: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between a displacement field and the vectors to the instance centroids.

    Parameters
    ----------
    displacement : torch.Tensor
        ``(B, 2, h, w)`` displacement ``(dy, dx)`` in grid cells.
    labels : torch.Tensor
        ``(B, h, w)`` int instance labels on the same grid: 0 background
        (target 0), 255 ignore, any other value one instance (its centroid is
        the mean position of its cells in that image).

    Returns
    -------
    Scalar: the L1 error summed over the two channels, averaged over the
    instance cells and over the background cells, then the two averages
    averaged (as the reference balances its pair losses), so that the small
    share of instance cells is not drowned by background; 0 when every cell
    is ignored.
    """
    B, _, h, w = displacement.shape
    labels = labels.long()
    valid = labels != 255
    if not bool(valid.any()):
        return displacement.sum() * 0.0
    # one key per (image, label): centroids of every instance of the batch at once
    keys = labels + torch.arange(B, device=labels.device).view(B, 1, 1) * (int(labels.max()) + 1)
    _, inverse = torch.unique(keys, return_inverse=True)
    flat = inverse.view(-1)
    n = int(flat.max()) + 1
    yy, xx = torch.meshgrid(
        torch.arange(h, device=labels.device, dtype=displacement.dtype),
        torch.arange(w, device=labels.device, dtype=displacement.dtype),
        indexing="ij",
    )
    pos = torch.stack([yy.expand(B, h, w), xx.expand(B, h, w)])  # (2, B, h, w)
    count = torch.zeros(n, device=labels.device, dtype=displacement.dtype).index_add_(0, flat, torch.ones_like(flat, dtype=displacement.dtype))
    centre = torch.stack([torch.zeros(n, device=labels.device, dtype=displacement.dtype).index_add_(0, flat, p.reshape(-1)) for p in pos]) / count
    target = centre[:, flat].view(2, B, h, w) - pos
    target = torch.where((labels > 0) & valid, target, torch.zeros_like(target)).permute(1, 0, 2, 3)
    error = torch.abs(displacement - target).sum(1)
    parts = [error[m].mean() for m in ((labels > 0) & valid, labels == 0) if bool(m.any())]
    return sum(parts) / len(parts)
