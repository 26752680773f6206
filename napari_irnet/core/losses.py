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
"""

from __future__ import annotations

import torch

from .path_index import PathIndex, boundary_to_affinity, displacement_targets, pair_values

__all__ = ["affinity_displacement_loss"]

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
        :func:`~napari_irnet.core.path_index.pair_labels`.
    path_index : PathIndex
        Pairs of the ``(h, w)`` grid (radius 10 in the reference's training).

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
    dp_fg = _masked_mean(torch.abs(pair_disp - target), fg_pos[:, None], scale=2.0)
    dp_bg = _masked_mean(torch.abs(pair_disp), bg_pos[:, None], scale=2.0)

    total = (pos + neg_loss) / 2 + (dp_fg + dp_bg) / 2
    return {"pos": pos, "neg": neg_loss, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}
