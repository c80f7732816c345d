"""LOST's seed, seed expansion and box (Siméoni et al., BMVC 2021) and CorLoc's box IoU.

Written after valeoai/LOST @fcedbecb644f18358a660ce58c739cc6374feda8, object_discovery.py
(``lost``, ``patch_scoring``, ``detect_box``) and datasets.py (``bbox_iou``):

1. ``A = F Fᵀ`` over the ``h*w`` patch features ``F`` (raw dot products, no normalisation).
2. Degree of a patch = the number of *other* patches with ``A > 0``; patches are ranked by
   increasing degree (the official ``argsort(-degree, descending=True)``; ties follow that
   same torch call).
3. Seed = the lowest-degree patch. Of the ``k_patches`` lowest-degree patches, those with
   ``A[seed, ·] > 0`` are kept; ``M`` = the sum of their rows of ``A`` (raw).
4. The connected component (4-connectivity, ``scipy.ndimage.label``'s default) of ``M > 0``
   on the ``h x w`` grid that holds the seed gives the box ``[min, max + 1)`` in patches,
   times the patch size, ``(x0, y0, x1, y1)``, with ``x1, y1`` clipped to the unpadded
   image size.

CorLoc: an image is a hit when the IoU of its box with any ground-truth box is >= 0.5, the
IoU computed in float32 with ``eps = 1e-7`` added to the heights and the union as
``bbox_iou`` (an IoU of exactly 0.5 in exact arithmetic is a hit there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["box_iou", "corloc", "is_hit", "lost_box"]


def lost_box(
    feats: Tensor,
    grid: tuple[int, int],
    patch_size: int,
    image_size: tuple[int, int],
    k_patches: int = 100,
) -> dict[str, Any]:
    """One LOST box from the patch features of one image.

    Args:
        feats: ``[h*w, D]`` patch features, row-major (LOST: last-block keys).
        grid: ``(h, w)`` patches of the (padded) image.
        patch_size: pixels per patch side.
        image_size: ``(H, W)`` of the image before padding (clips the box).
        k_patches: lowest-degree patches compared with the seed (LOST: 100).

    Returns:
        ``{"box": [x0, y0, x1, y1] ints, "seed": int, "seed_degree": int,
        "expansion": int (patches kept)}``.
    """
    h, w = grid
    a = feats.float() @ feats.float().t()
    positive = a.clone()
    positive.fill_diagonal_(0)
    positive[positive < 0] = 0
    degree = (positive > 0).sum(dim=1)
    order = torch.argsort(-degree.to(torch.float32), descending=True)
    seed = order[0]
    potentials = order[:k_patches]
    similar = potentials[a[seed, potentials] > 0.0]
    m = a[similar, :].sum(dim=0)
    labels, _ = ndimage.label((m.reshape(h, w) > 0.0).cpu().numpy())
    row, col = divmod(int(seed), w)
    component = labels[row, col]
    if component == 0:  # cannot happen: A[seed, seed] = |f|^2 > 0 unless f = 0
        raise ValueError("LOST: the seed patch has a zero feature (no positive correlation)")
    ys, xs = np.nonzero(labels == component)
    box = [int(xs.min()) * patch_size, int(ys.min()) * patch_size,
           (int(xs.max()) + 1) * patch_size, (int(ys.max()) + 1) * patch_size]  # fmt: skip
    box[2], box[3] = min(box[2], int(image_size[1])), min(box[3], int(image_size[0]))
    return {"box": box, "seed": int(seed), "seed_degree": int(degree[seed]),
            "expansion": int(similar.numel())}  # fmt: skip


def box_iou(box: Tensor | list[float], gt: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU ``[N]`` of one ``(x0, y0, x1, y1)`` box with ``gt [N, 4]``, as LOST's ``bbox_iou``
    (float32, ``eps`` on the heights and the union)."""
    b = torch.as_tensor(box, dtype=torch.float32)
    g = torch.as_tensor(gt, dtype=torch.float32).reshape(-1, 4).t()
    inter = (torch.min(b[2], g[2]) - torch.max(b[0], g[0])).clamp(0) * (
        torch.min(b[3], g[3]) - torch.max(b[1], g[1])
    ).clamp(0)
    w1, h1 = b[2] - b[0], b[3] - b[1] + eps
    w2, h2 = g[2] - g[0], g[3] - g[1] + eps
    return inter / (w1 * h1 + w2 * h2 - inter + eps)


def is_hit(
    box: Tensor | list[float], gt: Tensor, threshold: float = 0.5
) -> tuple[bool, float | None]:
    """``(IoU >= threshold with any GT box, the best IoU or None without GT)``."""
    if len(gt) == 0:
        return False, None
    ious = box_iou(box, gt)
    return bool(torch.any(ious >= threshold)), float(ious.max())


def corloc(boxes: list[list[float]], gts: list[Tensor], threshold: float = 0.5) -> float:
    """CorLoc in percent: 100 * (images whose box hits a GT box) / images."""
    hits = sum(is_hit(b, torch.as_tensor(g), threshold)[0] for b, g in zip(boxes, gts, strict=True))
    return 100.0 * hits / max(1, len(boxes))
