"""Cluster-based foreground extraction (CBFE; Leopart, Ziegler & Asano, CVPR 2022).

Leopart (MkuuWaUjinga/leopart @840e365, ``experiments/fully_unsup_seg/fully_unsup_seg.py``
``get_cluster_precs``, ``find_good_threshold``, ``cluster_based_fg_extraction``):

1. Spherical k-means (K = 200) on the patch features of train and val together.
2. Each cluster's **precision** against a noisy attention foreground
   (:func:`~densessl.ops.attention_foreground.attention_foreground`): the share of its pixels
   inside the mask, averaged over the images where the cluster appears
   (:func:`cluster_precisions`).
3. **Uses train labels:** on the train split, mark the lowest 55 % ... 75 % of the clusters
   (sorted by precision) as background, one candidate cut per cluster count; score each
   cut by the image-averaged foreground IoU against the GT foreground (class != 0); round
   the precision at the best cut to the nearest multiple of 0.05 (:func:`choose_threshold`).
4. A split's foreground is every cluster whose precision *on that split* reaches the
   threshold (:func:`foreground_clusters`); val uses val precisions.

Everything is measured on label-sized maps (100 x 100 in Leopart): cluster maps and masks
are nearest-upsampled to it. Difference: pixels labelled ``ignore_index`` are left out of the
foreground IoU (Leopart counts VOC's boundary class as foreground there); an image with an
empty union scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "choose_threshold",
    "cluster_foreground_counts",
    "cluster_precisions",
    "foreground_clusters",
    "foreground_iou",
]


def _per_image_counts(clusters: Tensor, weights: Tensor | None, k: int) -> Tensor:
    """``[N, k]`` float64 (weighted) pixel counts of every cluster in every image."""
    n = clusters.shape[0]
    ids = clusters.reshape(n, -1).long()
    offset = torch.arange(n, device=ids.device).unsqueeze(1) * k
    flat = (ids + offset).reshape(-1)
    w = None if weights is None else weights.reshape(-1).to(torch.float64)
    counts = torch.bincount(flat, weights=w, minlength=n * k)
    return counts.to(torch.float64).reshape(n, k)


def cluster_precisions(clusters: Tensor, foreground: Tensor, k: int) -> Tensor:
    """Precision of each cluster against a (noisy) foreground mask, averaged over images.

    Args:
        clusters: ``[N, H, W]`` cluster ids in ``[0, k)``.
        foreground: ``[N, H, W]`` bool mask of the same size.
        k: Number of clusters.

    Returns:
        float64 ``[k]``: for each cluster, the mean over the images that contain it of
        ``|cluster & fg| / |cluster|``; 0 for a cluster absent from every image.
    """
    if clusters.shape != foreground.shape:
        raise ValueError(f"clusters {tuple(clusters.shape)} and mask {tuple(foreground.shape)}")
    total = _per_image_counts(clusters, None, k)
    inside = _per_image_counts(clusters, foreground.to(torch.float64), k)
    present = total > 0
    per_image = torch.where(present, inside / total.clamp_min(1), torch.zeros_like(total))
    appearances = present.sum(dim=0)
    return per_image.sum(dim=0) / appearances.clamp_min(1)


def cluster_foreground_counts(
    clusters: Tensor, labels: Tensor, k: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image, per-cluster counts that score any foreground set of clusters.

    Args:
        clusters: ``[N, H, W]`` cluster ids in ``[0, k)``.
        labels: ``[N, H, W]`` GT with 0 = background, other ids foreground, and
            ``ignore_index`` left out.

    Returns:
        ``(in_gt_fg [N, k], valid [N, k], gt_fg [N])`` float64: pixels of each cluster inside
        the GT foreground, valid (not ignored) pixels of each cluster, GT-foreground pixels.
    """
    valid = labels != ignore_index
    gt_fg = valid & (labels != 0)
    inside = _per_image_counts(clusters, gt_fg.to(torch.float64), k)
    counted = _per_image_counts(clusters, valid.to(torch.float64), k)
    return inside, counted, gt_fg.reshape(gt_fg.shape[0], -1).sum(dim=1).to(torch.float64)


def foreground_iou(counts: tuple[Tensor, Tensor, Tensor], foreground_sets: Tensor) -> Tensor:
    """Image-averaged foreground IoU of one or more sets of foreground clusters.

    Args:
        counts: :func:`cluster_foreground_counts` output.
        foreground_sets: bool ``[k]`` or ``[S, k]`` (clusters predicted as foreground).

    Returns:
        float64 ``[]`` or ``[S]``: the mean over images of ``|pred & gt| / |pred | gt|``
        (an empty union scores 1).
    """
    inside, counted, gt_fg = counts
    sets = foreground_sets.to(torch.float64)
    single = sets.ndim == 1
    sets = sets.reshape(-1, sets.shape[-1]).T  # [k, S]
    inter = inside @ sets  # [N, S]
    union = counted @ sets + gt_fg.unsqueeze(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))
    out = iou.mean(dim=0)
    return out[0] if single else out


def choose_threshold(
    precisions: Tensor,
    counts: tuple[Tensor, Tensor, Tensor],
    bg_fraction: Sequence[float] = (0.55, 0.75),
    step: float = 0.05,
) -> dict:
    """Leopart's precision cut, chosen with the train split's GT foreground.

    Candidate ``s`` (``int(lo * k) <= s < int(hi * k)``) marks the ``s`` lowest-precision
    clusters as background. The best candidate (highest image-averaged foreground IoU; the
    later candidate on ties) gives a precision; the threshold is the multiple of ``step``
    nearest to it (the lower one on ties).

    Args:
        precisions: float ``[k]`` cluster precisions on the train split.
        counts: :func:`cluster_foreground_counts` of the train split.
        bg_fraction: Range of the share of clusters marked background.
        step: Rounding grid of the threshold.

    Returns:
        ``{"threshold", "best_precision", "best_num_background", "best_fg_iou",
        "candidates": [{"num_background", "precision", "fg_iou"}, ...]}``.
    """
    k = precisions.numel()
    precs = precisions.detach().cpu().to(torch.float64).numpy()
    order = np.argsort(precs, kind="stable")
    starts = list(range(int(bg_fraction[0] * k), int(bg_fraction[1] * k)))
    if not starts:
        starts = [min(int(bg_fraction[0] * k), k - 1)]
    sets = torch.zeros(len(starts), k, dtype=torch.bool)
    for row, start in enumerate(starts):
        sets[row, torch.from_numpy(order[start:].copy())] = True
    ious = foreground_iou(counts, sets.to(counts[0].device)).cpu().tolist()
    candidates = [
        {"num_background": s, "precision": float(precs[order[s]]), "fg_iou": iou}
        for s, iou in zip(starts, ious, strict=True)
    ]
    best = max(reversed(candidates), key=lambda c: c["fg_iou"])  # later candidate on ties
    grid = np.arange(0.0, 1.0, step)
    threshold = round(float(grid[int(np.argmin(np.abs(grid - best["precision"])))]), 10)
    return {
        "threshold": threshold,
        "best_precision": best["precision"],
        "best_num_background": best["num_background"],
        "best_fg_iou": best["fg_iou"],
        "candidates": candidates,
    }


def foreground_clusters(precisions: Tensor, threshold: float) -> Tensor:
    """bool ``[k]``: the clusters whose precision reaches ``threshold``."""
    return precisions >= threshold
