"""Drawing the feature pictures with Pillow only: colour maps, overlays and labelled panels.

Tensors come in as float ``[0, 1]`` (``[3, H, W]`` images or ``[h, w, 3]`` / ``[h, w]`` maps
on any device) and leave as ``PIL.Image`` in RGB. Patch-level maps are enlarged with
nearest-neighbour (one flat square per patch, as the features are); attention maps with
bilinear interpolation, as in DINO's ``visualize_attention.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "GAP",
    "LABEL_HEIGHT",
    "PALETTE",
    "colormap",
    "compose_panel",
    "heat_overlay",
    "image_to_pil",
    "label_overlay",
    "map_to_pil",
    "panel_size",
]

#: Height in pixels of the caption strip above every tile, and the gap between tiles.
LABEL_HEIGHT = 14
GAP = 2

#: 20 well-separated colours for cluster labels (Tableau 20 order), cycled beyond 20.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip

#: Control points of the "inferno" colour map (matplotlib's, sampled at 0, 1/8, ..., 1).
_INFERNO = np.array(
    [
        (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
        (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
    ],
    dtype=np.float64,
)  # fmt: skip


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def image_to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` float image in ``[0, 1]`` (or uint8) → RGB ``PIL.Image``."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        array = image.permute(1, 2, 0).cpu().numpy()
    else:
        array = np.rint(_to_numpy(image.clamp(0, 1)).transpose(1, 2, 0) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def map_to_pil(rgb: Tensor, size: tuple[int, int]) -> Image.Image:
    """Patch-level ``[h, w, 3]`` colours in ``[0, 1]`` → RGB image of ``size = (W, H)``,
    one flat block per patch (nearest-neighbour)."""
    array = np.rint(_to_numpy(rgb.clamp(0, 1)) * 255).astype(np.uint8)
    return Image.fromarray(array, mode="RGB").resize(size, Image.Resampling.NEAREST)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` (any shape) → uint8 RGB (shape + ``(3,)``), "inferno" colours."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(_INFERNO) - 2)
    t = (v - lo)[..., None]
    return np.rint(_INFERNO[lo] * (1 - t) + _INFERNO[lo + 1] * t).astype(np.uint8)


def heat_overlay(base: Image.Image, heat: Tensor, alpha: float = 0.7) -> Image.Image:
    """Colour-mapped ``[h, w]`` map (min-max scaled to ``[0, 1]``), enlarged bilinearly to the
    base image's size and blended over it with opacity ``alpha``."""
    values = _to_numpy(heat)
    lo, hi = float(values.min()), float(values.max())
    values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    small = Image.fromarray(values.astype(np.float32), mode="F")
    big = np.asarray(small.resize(base.size, Image.Resampling.BILINEAR))
    return Image.blend(base, Image.fromarray(colormap(big), mode="RGB"), alpha)


def label_overlay(base: Image.Image, labels: Tensor, alpha: float = 0.7) -> Image.Image:
    """Integer ``[h, w]`` label map in :data:`PALETTE` colours (nearest-enlarged), blended over
    the base image with opacity ``alpha``."""
    ids = labels.detach().cpu().numpy().astype(np.int64)
    colours = np.array(PALETTE, dtype=np.uint8)[ids % len(PALETTE)]
    layer = Image.fromarray(colours, mode="RGB").resize(base.size, Image.Resampling.NEAREST)
    return Image.blend(base, layer, alpha)


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def panel_size(num_tiles: int, tile: tuple[int, int], columns: int = 4) -> tuple[int, int]:
    """``(width, height)`` of :func:`compose_panel` for ``num_tiles`` tiles of ``tile = (W, H)``."""
    cols = max(1, min(columns, num_tiles))
    rows = max(1, math.ceil(num_tiles / cols))
    return cols * (tile[0] + GAP) + GAP, rows * (tile[1] + LABEL_HEIGHT + GAP) + GAP


def compose_panel(tiles: Sequence[tuple[str, Image.Image]], columns: int = 4) -> Image.Image:
    """Lay captioned tiles of one size out in a grid, ``columns`` per row, white background.

    Raises:
        ValueError: no tiles, or tiles of different sizes.
    """
    if not tiles:
        raise ValueError("a panel needs at least one tile")
    size = tiles[0][1].size
    if any(image.size != size for _, image in tiles):
        raise ValueError(f"all tiles must have one size, got {[im.size for _, im in tiles]}")
    cols = max(1, min(columns, len(tiles)))
    panel = Image.new("RGB", panel_size(len(tiles), size, columns), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (caption, image) in enumerate(tiles):
        x = GAP + (i % cols) * (size[0] + GAP)
        y = GAP + (i // cols) * (size[1] + LABEL_HEIGHT + GAP)
        draw.text((x + 1, y + 1), caption, fill=(0, 0, 0), font=_font())
        panel.paste(image.convert("RGB"), (x, y + LABEL_HEIGHT))
    return panel
