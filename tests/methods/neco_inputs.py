"""Fixed inputs on which values were pinned from the official NeCo code.

Shared by ``test_neco.py`` and ``test_neco_queue.py`` and by the scratch scripts that ran the
official code (vpariza/NeCo @3932160, outside this repository) to compute the pinned numbers.
Everything is deterministic (sines of the index, hand-written boxes): no RNG.
"""

from __future__ import annotations

import torch

B, D, GLOBAL, LOCAL, PATCH = 2, 6, 32, 16, 8  # 4x4 global and 2x2 local token grids
#: Crop boxes (x1, y1, x2, y2) in a 64 px image, per image: 2 global then 2 local crops.
BOXES = torch.tensor(
    [
        [[0, 0, 48, 40], [10, 6, 60, 56], [20, 10, 40, 30], [4, 20, 24, 44]],
        [[8, 4, 64, 60], [0, 10, 40, 50], [30, 30, 50, 50], [12, 8, 28, 28]],
    ],
    dtype=torch.float32,
)


def rows(count: int, offset: float) -> torch.Tensor:
    """Deterministic embeddings ``[count, D]`` (no RNG), the official layout's rows."""
    i = torch.arange(count * D, dtype=torch.float64).reshape(count, D)
    return (torch.sin(0.37 * i + offset) + 0.5 * torch.cos(1.3 * i * (offset + 1))).float()


def grids(flat: torch.Tensor, views: int, side: int) -> list[torch.Tensor]:
    """Official rows (view-major, image, row-major tokens) → per view ``[B, D, side, side]``."""
    per_view = flat.reshape(views, B, side, side, D)
    return [per_view[v].permute(0, 3, 1, 2) for v in range(views)]
