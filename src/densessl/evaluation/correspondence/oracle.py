"""Scene positions as features: the ceiling of keypoint transfer on synthetic view pairs.

:class:`PaintedPairs` replaces both views of each :class:`~densessl.data.keypoints.scenes.
SyntheticPairs` item by its scene coordinates painted as colours (red = x, green = y of the
scene point under each pixel, as fractions of the scene side); :class:`CoordinateOracle`
reads them back and returns per patch a radial-basis code of the patch's scene position, so
cosine similarity peaks at the same scene point. PCK then shows what the patch grid alone
costs (0.51 at 8-px cells on 96-px views with predictions at cell centres, 0.23 with
Probe3D's cell corners).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CoordinateOracle", "PaintedPairs"]


class PaintedPairs(Dataset):
    """Synthetic pairs with both views painted with their scene coordinates."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs
        self.image_size = pairs.size

    def __len__(self) -> int:
        return len(self.pairs)

    def _paint(self, box: tuple[int, int, int], flip: bool, scene: int) -> Tensor:
        x0, y0, side = box
        size = self.pairs.size
        u = (torch.arange(size) + 0.5) * side / size
        u = u.flip(0) if flip else u
        x = ((x0 + u) / scene).view(1, -1).expand(size, size)
        y = ((y0 + u.sort().values) / scene).view(-1, 1).expand(size, size)
        rgb = torch.stack([x, y, torch.full_like(x, 0.5)])
        return (rgb * 255).round().to(torch.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.pairs[index])
        views = item["views"]
        for key, k in (("source", 0), ("target", 1)):
            item[key] = self._paint(views["boxes"][k], views["flips"][k], views["scene_size"])
        return item


class CoordinateOracle:
    """``images`` (ImageNet-normalised :class:`PaintedPairs` views) -> ``[B, h, w, 144]``:
    Gaussian radial-basis code (12 x 12 centres, sigma 0.03 of the scene side) of each
    patch's mean scene position."""

    def __init__(self, patch_size: int = 8, grid: int = 12, sigma: float = 0.03) -> None:
        self.patch_size, self.sigma = patch_size, sigma
        g = (torch.arange(grid) + 0.5) / grid
        self.centres = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)

    def __call__(self, images: Tensor) -> Tensor:
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = images.cpu() * std + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        xy = F.avg_pool2d(rgb[:, :2], self.patch_size).permute(0, 2, 3, 1)
        d2 = ((xy[..., None, :] - self.centres) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * self.sigma**2)).to(images.device)
