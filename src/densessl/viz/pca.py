"""Tensor maths behind the feature pictures: patch PCA to RGB, foreground mask, cluster maps.

Everything works on lists of per-image patch grids ``[h_i, w_i, D]`` (grids may differ in
size) and fits *jointly* over all of them, so a colour means the same feature direction in
every picture of one call. All functions follow the device of their inputs and are
deterministic (PCA by eigen-decomposition, seeded k-means).

PCA to RGB (:func:`pca_rgb`), as usually shown for DINO / DINOv2 features:

1. optional foreground mask (:func:`foreground_mask`): project every patch on the first
   principal component of all patches, in units of its standard deviation. The sign of a
   principal axis is arbitrary, so it is oriented from the pictures: the side of 0 that holds
   most patches of the image *borders* is background (objects rarely fill the border);
   patches above ``threshold`` on the other side are foreground;
2. a 3-component PCA fitted on the (foreground) patches; each component is scaled to
   ``[0, 1]`` with its 1st / 99th percentiles over all those patches (outliers clip) and
   becomes one colour channel; masked-out patches are black.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from densessl.ops.cluster import fit_pca, kmeans

__all__ = ["border_mask", "cluster_maps", "foreground_mask", "pca_rgb"]


def _check_grids(features: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """Validate ``[h, w, D]`` grids and flatten them to ``[N, D]`` float32 (joint order)."""
    if len(features) == 0:
        raise ValueError("need the patch features of at least one image")
    dims = {f.shape[-1] for f in features}
    if any(f.ndim != 3 for f in features) or len(dims) != 1:
        shapes = [tuple(f.shape) for f in features]
        raise ValueError(f"features must be [h, w, D] grids with one D, got shapes {shapes}")
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in features]
    flat = torch.cat([f.reshape(-1, f.shape[-1]).float() for f in features])
    return flat, shapes


def _split(values: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Inverse of the flattening in :func:`_check_grids`: ``[N, ...]`` → ``[h, w, ...]`` each."""
    sizes = [h * w for h, w in shapes]
    parts = torch.split(values, sizes)
    return [p.reshape(h, w, *values.shape[1:]) for p, (h, w) in zip(parts, shapes, strict=True)]


def border_mask(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[height, width]`` map, true on the outermost ring of cells."""
    mask = torch.ones(height, width, dtype=torch.bool, device=device)
    if height > 2 and width > 2:
        mask[1:-1, 1:-1] = False
    return mask


def foreground_mask(features: Sequence[Tensor], threshold: float = 0.0) -> list[Tensor]:
    """Foreground patches from the sign of the first principal component (see module doc).

    Args:
        features: per-image patch grids ``[h, w, D]``; the component is fitted over all.
        threshold: cut on the standardised first component (0 = its mean). Larger values
            keep fewer, more confidently foreground patches.

    Returns:
        Boolean ``[h, w]`` maps, one per image. The axis is oriented so that the side of 0
        holding most border patches is background; foreground is ``score > threshold``.
        When the cut would leave no foreground patch at all, every patch is kept (a mask
        that hides everything shows nothing).
    """
    flat, shapes = _check_grids(features)
    first = fit_pca(flat, dim=1).transform(flat)[:, 0]
    std = first.std() if first.numel() > 1 else first.new_tensor(0.0)
    score = first / std.clamp_min(1e-12)
    border = torch.cat([border_mask(h, w, flat.device).flatten() for h, w in shapes])
    # Orient the axis so that the background (the side owning most border patches) is < 0.
    positive = score > 0
    on_border = positive[border] if border.any() else positive
    if on_border.float().mean() > 0.5:
        score = -score
    mask = score > threshold
    if not mask.any():
        mask = torch.ones_like(mask)
    return _split(mask, shapes)


def pca_rgb(
    features: Sequence[Tensor],
    masks: Sequence[Tensor] | None = None,
    low: float = 0.01,
    high: float = 0.99,
) -> list[Tensor]:
    """Joint PCA of patch features to RGB (see the module docstring).

    Args:
        features: per-image patch grids ``[h, w, D]`` (``D >= 1``; fewer than 3 dimensions
            leave the missing channels at 0).
        masks: optional boolean ``[h, w]`` foreground maps (:func:`foreground_mask`): the PCA
            and the colour scaling use only foreground patches, background becomes black.
        low / high: quantiles of each component mapped to 0 and 1 (values outside clip).

    Returns:
        Float ``[h, w, 3]`` images in ``[0, 1]``, one per input grid, on the input device.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    flat, shapes = _check_grids(features)
    if masks is None:
        keep = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    else:
        if len(masks) != len(shapes) or any(
            tuple(m.shape) != s for m, s in zip(masks, shapes, strict=False)
        ):
            raise ValueError("masks must be one [h, w] map per feature grid, of the same size")
        keep = torch.cat([m.reshape(-1).to(device=flat.device, dtype=torch.bool) for m in masks])
    fitted = flat[keep] if keep.any() else flat
    pca = fit_pca(fitted, dim=3)
    projected = pca.transform(flat)  # [N, min(3, D)]
    inside = projected[keep] if keep.any() else projected
    sample = inside
    if sample.shape[0] > 1_000_000:  # torch.quantile's input limit; an even subsample is fine
        sample = sample[:: sample.shape[0] // 1_000_000 + 1]
    lo = torch.quantile(sample, low, dim=0)
    hi = torch.quantile(sample, high, dim=0)
    scaled = ((projected - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    rgb = torch.zeros(flat.shape[0], 3, device=flat.device)
    rgb[:, : scaled.shape[1]] = scaled
    rgb[~keep] = 0.0
    return _split(rgb, shapes)


def cluster_maps(
    features: Sequence[Tensor], k: int, seed: int = 0, n_init: int = 3, iters: int = 50
) -> list[Tensor]:
    """Joint k-means of L2-normalised patch features → per-image ``[h, w]`` int64 label maps.

    Clusters are renumbered by decreasing size (0 = the largest), so colours are stable
    between calls on the same images.

    Raises:
        ValueError: ``k`` is not between 1 and the number of patches.
    """
    flat, shapes = _check_grids(features)
    if not 1 <= k <= flat.shape[0]:
        raise ValueError(f"clusters must be between 1 and the number of patches ({flat.shape[0]})")
    x = torch.nn.functional.normalize(flat, dim=1)
    labels = kmeans(x, k, iters=iters, seed=seed, n_init=n_init).assignments
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(counts, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=order.device)
    return _split(rank[labels], shapes)
