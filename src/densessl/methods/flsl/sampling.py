"""FLSL's token sampling windows ("random pooling"): one student token per w x w window.

Su et al., "FLSL: Feature-level Self-supervised Learning", NeurIPS 2023; official code
QingSuML/FLSL @acb5d6f (``main_flsl.py``, ``DataAugmentationFLSL._sampling_mask``).

Only a subset of each student view's tokens enters FLSL's losses (the queries of the
mean-shift and cross-attention steps). For an ``h x w`` token grid and window size ``s``:

* the grid is tiled with ``(h // s) x (w // s)`` windows covering an ``(h//s·s) x (w//s·s)``
  block; when that block is smaller than the grid it sits in one of the four corners,
  chosen uniformly per view and image (top-left, top-right, bottom-left, bottom-right);
* one token is taken per window: the window's top-left token (the official default,
  ``random_sampling=False``) or a uniformly random one (``random_sampling=True``).

ViT-S/16 at 224 px (14x14 grid) with ``s = 3`` gives 16 tokens from a 12x12 corner block; a
96 px local view (6x6) with ``s = 2`` gives 9. Indices are returned in raster order, the
order in which the official boolean mask selects them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densessl.ops.keyed_random import keyed_randint

__all__ = ["num_window_samples", "window_sample_indices"]

Grid = tuple[int, int]


def num_window_samples(grid: Grid, window: int) -> int:
    """Tokens taken from an ``(h, w)`` grid with ``window x window`` windows.

    Raises:
        ValueError: the window is larger than the grid (no token would be sampled).
    """
    height, width = grid
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if height < window or width < window:
        raise ValueError(
            f"sampling window {window}x{window} does not fit the {height}x{width} token grid; "
            "use a smaller window or larger crops"
        )
    return (height // window) * (width // window)


def window_sample_indices(
    grid: Grid,
    window: int,
    batch: int,
    random_sampling: bool = False,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
    salt: int = 0,
) -> Tensor:
    """Sample one token per window for ``batch`` views (see the module docstring).

    Args:
        grid: token grid ``(h, w)`` of the views.
        window: window side ``s`` (3 for FLSL's global views, 2 for local ones).
        batch: number of views; each draws its own corner (and window offsets).
        random_sampling: a random token per window instead of the top-left one.
        generator: CPU random source (None: the global one). Ignored when ``keys`` is given.
        keys: ``[batch]`` int64 sample keys (``batch["key"]``): the corner and offsets of
            view ``i`` are then a function of ``(keys[i], salt)`` only
            (:mod:`densessl.ops.keyed_random`), computed on ``keys.device`` without a host sync,
            so they do not depend on the process or on the other images of the batch.
        salt: separates the draws of different views of one image (with ``keys``).

    Returns:
        ``[batch, q]`` long, q = ``(h // s) * (w // s)``: row-major token indices
        ``row * w + col``, ascending in each row; on ``keys.device`` (else CPU).
    """
    height, width = grid
    rows_w, cols_w = height // window, width // window
    count = num_window_samples(grid, window)
    device = torch.device("cpu") if keys is None else keys.device
    if keys is not None:
        if keys.shape != (batch,):
            raise ValueError(f"keys must be [{batch}], got {list(keys.shape)}")
        corner = keyed_randint(keys, 2 * salt, 4, 1)[:, 0]
    else:
        corner = torch.randint(4, (batch,), generator=generator)
    row0 = torch.where(corner >= 2, height - rows_w * window, 0)  # bottom corners
    col0 = torch.where(corner % 2 == 1, width - cols_w * window, 0)  # right corners
    if random_sampling and keys is not None:
        offset = keyed_randint(keys, 2 * salt + 1, window * window, count)
    elif random_sampling:
        offset = torch.randint(window * window, (batch, count), generator=generator)
    else:
        offset = torch.zeros(batch, count, dtype=torch.long, device=device)
    window_row = torch.arange(rows_w, device=device).repeat_interleave(cols_w)
    window_col = torch.arange(cols_w, device=device).repeat(rows_w)
    rows = row0[:, None] + window_row * window + offset // window
    cols = col0[:, None] + window_col * window + offset % window
    return (rows * width + cols).sort(dim=1).values
