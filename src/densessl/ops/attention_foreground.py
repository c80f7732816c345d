"""Leopart's foreground mask: a binary patch mask from the teacher's CLS attention.

Ziegler & Asano, "Self-Supervised Learning of Object Parts for Semantic Segmentation", CVPR
2022, §3.2 ("Foreground-background separation"); official code MkuuWaUjinga/leopart @7835701
(``experiments/utils.py`` ``process_attentions``, called in ``src/leopart.py``
``shared_step``). From the last block's CLS→patch attention ``[B, heads, h*w]``:

1. average the heads → one map ``[B, 1, h, w]``;
2. Gaussian blur (kernel 7, σ = 0.6, reflect padding; torchvision's ``gaussian_blur``);
3. keep the smallest set of patches holding ``mass`` (0.6) of the map's total: sort
   ascending, normalise, keep where the cumulative sum exceeds ``1 - mass`` (DINO's
   ``visualize_attention.py`` rule);
4. drop connected components (8-connectivity) of at most 2 patches.

Step 4 is computed locally, on the device and without a host sync: a foreground patch belongs
to a component of size 1 when it has no foreground neighbour among its 8, and to a component
of size exactly 2 when it has exactly one foreground neighbour which itself has exactly one
(any larger component has a patch with two or more). The official code labels components
with ``skimage.measure.label`` on the CPU; the results are identical (tested against
``scipy.ndimage.label``).

On grids smaller than 4x4 the kernel is shrunk to ``2·min(h, w) − 1`` (reflect padding needs
the padding to be smaller than the side); the official code only ever sees 14x14 grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = ["attention_foreground", "mass_threshold", "remove_small_components"]


def mass_threshold(maps: Tensor, mass: float) -> Tensor:
    """Boolean mask of the highest entries of each map that hold ``mass`` of its total.

    Args:
        maps: ``[B, N]`` non-negative values (flattened maps).
        mass: fraction in (0, 1] of each row's sum to keep (0.6 in Leopart).

    Returns:
        ``[B, N]`` bool. Entries are sorted ascending and kept where the normalised cumulative
        sum exceeds ``1 - mass`` (ties in any order).
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    values, order = torch.sort(maps, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    keep_sorted = values.cumsum(dim=-1) > (1 - mass)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _neighbour_sum(x: Tensor) -> Tensor:
    """Sum over the 8 neighbours (zero outside the grid) of ``x`` ``[B, 1, h, w]``."""
    kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[0, 0, 1, 1] = 0
    return F.conv2d(x, kernel, padding=1)


def remove_small_components(mask: Tensor) -> Tensor:
    """Drop 8-connected foreground components of 1 or 2 patches (Leopart's cleanup).

    Args:
        mask: ``[B, h, w]`` bool.

    Returns:
        ``[B, h, w]`` bool, ``mask`` without its components of size <= 2.
    """
    fg = mask[:, None].float()
    count = _neighbour_sum(fg) * fg  # foreground neighbours of each foreground patch
    # For a patch with exactly one foreground neighbour: that neighbour's own count.
    partner = _neighbour_sum(count)
    single = (count == 0) & (fg > 0)
    pair = (count == 1) & (partner == 1)
    return mask & ~(single | pair)[:, 0]


def attention_foreground(
    attention: Tensor,
    grid: tuple[int, int],
    mass: float = 0.6,
    blur_sigma: float = 0.6,
    blur_kernel: int = 7,
    remove_small: bool = True,
) -> Tensor:
    """Leopart's foreground mask from CLS→patch attention (see the module docstring).

    Args:
        attention: ``[B, heads, h*w]`` last-block CLS→patch attention (e.g.
            :meth:`densessl.models.vit.ViTBackbone.last_attention`), any float dtype.
        grid: the token grid ``(h, w)``.
        mass: fraction of the blurred attention mass kept as foreground (0.6).
        blur_sigma: σ of the Gaussian blur in patches (0.6; 0 disables the blur).
        blur_kernel: odd kernel side (7).
        remove_small: drop components of at most 2 patches (True, as the official code).

    Returns:
        ``[B, h, w]`` bool foreground mask on the attention's device.
    """
    height, width = grid
    if attention.dim() != 3 or attention.shape[-1] != height * width:
        raise ValueError(
            f"attention must be [B, heads, {height * width}] for a {height}x{width} grid, "
            f"got {tuple(attention.shape)}"
        )
    if blur_kernel < 1 or blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd number, got {blur_kernel}")
    maps = attention.float().mean(dim=1).reshape(-1, 1, height, width)
    kernel = min(blur_kernel, 2 * min(height, width) - 1)
    if blur_sigma > 0 and kernel > 1:
        maps = TF.gaussian_blur(maps, [kernel, kernel], [blur_sigma, blur_sigma])
    mask = mass_threshold(maps.flatten(1), mass).reshape(-1, height, width)
    return remove_small_components(mask) if remove_small else mask
