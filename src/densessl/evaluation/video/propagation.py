"""Semi-supervised label propagation through a video by patch-feature affinities.

The algorithm of DINO's DAVIS-2017 evaluation (Caron et al., ICCV 2021;
facebookresearch/dino @7c446df, eval_video_segmentation.py, ``label_propagation``,
``restrict_neighborhood``, ``norm_mask`` and ``eval_video_tracking_davis``), written for
densessl and pinned to it in ``tests/evaluation/test_video_propagation.py``:

1. Every frame's patch features ``[h*w, D]`` are L2-normalised over channels.
2. The context of frame ``t`` is the first frame (its ground-truth one-hot mask) plus the
   ``n_last_frames`` previous frames (their *soft* propagated masks, before upsampling).
3. Affinity ``exp(f_tar . f_src / temperature)`` per context frame, zeroed outside a square
   (Chebyshev) window of ``neighbourhood`` patches around each target patch.
4. One top-k over all context patches jointly per target patch: values below the k-th
   largest are zeroed (ties at the k-th value kept), then each target column sums to 1.
5. ``labels_tar [C, h*w] = labels_ctx [C, n*h*w] @ affinity [n*h*w, h*w]``.
6. Output: bilinear upsampling by the patch size (``align_corners=False``), a per-channel
   min-max to [0, 1] where the channel max is > 0, argmax over channels, then a nearest
   resize to the original frame size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from densessl.evaluation.preprocess import resize_label

__all__ = [
    "neighbourhood_mask",
    "normalise_channels",
    "propagate_frame",
    "propagate_video",
    "soft_to_mask",
]


def neighbourhood_mask(h: int, w: int, radius: int, device: torch.device | None = None) -> Tensor:
    """``[h*w (target), h*w (source)]`` float mask: 1 where ``|di| <= radius`` and
    ``|dj| <= radius`` (a square window clipped at the borders), else 0."""
    i = torch.arange(h, device=device).repeat_interleave(w)
    j = torch.arange(w, device=device).repeat(h)
    near = ((i[:, None] - i[None, :]).abs() <= radius) & ((j[:, None] - j[None, :]).abs() <= radius)
    return near.float()


def propagate_frame(
    target: Tensor,
    context: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.1,
    topk: int = 5,
    mask: Tensor | None = None,
) -> Tensor:
    """Soft labels of one target frame from its context frames.

    Args:
        target: ``[h*w, D]`` patch features of the target frame (normalised here).
        context: ``[n, h*w, D]`` patch features of the ``n`` context frames.
        labels: ``[n, C, h*w]`` (soft) labels of the context frames.
        temperature: affinity temperature (DINO: 0.1, hard-coded).
        topk: sources kept per target patch, jointly over all context frames (DINO: 5).
        mask: ``[h*w, h*w]`` neighbourhood mask (:func:`neighbourhood_mask`) or None.

    Returns:
        ``[C, h*w]`` soft labels of the target frame.
    """
    n, hw, _ = context.shape
    tar = F.normalize(target, dim=-1, p=2)
    src = F.normalize(context, dim=-1, p=2)
    aff = torch.exp(torch.einsum("qd,nkd->nqk", tar, src) / temperature)  # [n, tar, src]
    if mask is not None:
        aff = aff * mask
    aff = aff.transpose(2, 1).reshape(n * hw, hw)  # [n*src, tar]
    kth = torch.topk(aff, k=min(topk, n * hw), dim=0).values.min(dim=0).values
    aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
    aff = aff / aff.sum(dim=0, keepdim=True)
    flat = labels.transpose(0, 1).reshape(labels.shape[1], n * hw)  # [C, n*src]
    return flat @ aff


def propagate_video(
    features: Iterable[Tensor],
    first_labels: Tensor,
    *,
    n_last_frames: int = 7,
    temperature: float = 0.1,
    topk: int = 5,
    neighbourhood: int = 12,
) -> Iterator[Tensor]:
    """Propagate the first frame's labels through a video.

    Args:
        features: per-frame patch features ``[h, w, D]``, the first frame first.
        first_labels: ``[C, h, w]`` one-hot labels of the first frame (background included).
        n_last_frames: previous frames kept in the context besides the first (DINO: 7).
        temperature / topk: see :func:`propagate_frame`.
        neighbourhood: window radius in patches (0 or less: no restriction; DINO: 12).

    Yields:
        ``[C, h, w]`` soft labels of frames 1, 2, ... (before upsampling).
    """
    frames = iter(features)
    first = next(frames)
    h, w, d = first.shape
    c = first_labels.shape[0]
    first_feat = first.reshape(h * w, d)
    first_lab = first_labels.reshape(c, h * w).to(first_feat)
    mask = neighbourhood_mask(h, w, neighbourhood, first.device) if neighbourhood > 0 else None
    queue: list[tuple[Tensor, Tensor]] = []
    for feat in frames:
        tar = feat.reshape(h * w, d)
        ctx = torch.stack([first_feat, *(f for f, _ in queue)])
        lab = torch.stack([first_lab, *(s for _, s in queue)])
        soft = propagate_frame(tar, ctx, lab, temperature=temperature, topk=topk, mask=mask)
        if len(queue) == n_last_frames:
            queue.pop(0)
        if n_last_frames > 0:
            queue.append((tar, soft))
        yield soft.reshape(c, h, w)


def normalise_channels(scores: Tensor) -> Tensor:
    """Per-channel min-max of ``[C, H, W]`` to [0, 1], only where the channel max is > 0
    (DINO's ``norm_mask``; other channels are left as they are)."""
    low = scores.amin(dim=(1, 2), keepdim=True)
    high = scores.amax(dim=(1, 2), keepdim=True)
    shifted = scores - low
    top = shifted.amax(dim=(1, 2), keepdim=True)
    scaled = shifted / torch.where(top > 0, top, torch.ones_like(top))
    return torch.where(high > 0, scaled, scores)


def soft_to_mask(soft: Tensor, patch_size: int, size: tuple[int, int]) -> Tensor:
    """``[C, h, w]`` soft labels -> ``[H, W]`` long mask at the original frame ``size``.

    Bilinear upsampling by ``patch_size`` (``align_corners=False``), per-channel min-max
    (:func:`normalise_channels`), argmax, then a nearest resize to ``size`` with PIL's rule
    (:func:`densessl.evaluation.preprocess.nearest_index`, exact incl. its float64 steps).
    """
    up = F.interpolate(soft[None], scale_factor=patch_size, mode="bilinear", align_corners=False)[0]
    labels = normalise_channels(up).argmax(dim=0)
    return resize_label(labels, size, rule="pil")
