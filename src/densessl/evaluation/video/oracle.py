"""Ground-truth masks as features: the ceiling of label propagation on synthetic videos.

:class:`PaintedVideos` replaces every frame of a video dataset by its object-id mask painted
in :data:`PALETTE` (background black, objects in saturated colours); :class:`MaskOracle`
reads the ids back off the colours (nearest palette colour after undoing the ImageNet
normalisation) and returns, per patch, the fraction of its pixels of each id. With these
features label propagation can only lose what the patch grid and the upsampling lose, so
J&F shows the protocol's ceiling at a given patch size (0.58 at 8-px patches on 64-px
frames, where F allows one pixel of boundary error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from densessl.evaluation.preprocess import IMAGENET_MEAN

__all__ = ["PALETTE", "MaskOracle", "PaintedVideos"]

PALETTE = torch.tensor(
    [
        [0, 0, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
    ],
    dtype=torch.float32,
)
"""Colour of object id 0 (background) .. 7."""


class PaintedVideos(Dataset):
    """``videos`` with each frame replaced by its mask painted in :data:`PALETTE`."""

    def __init__(self, videos: Dataset) -> None:
        self.videos = videos
        self.image_size = getattr(videos, "image_size", None)
        self.names = getattr(videos, "names", None)

    def __len__(self) -> int:
        return len(self.videos)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.videos[index])
        ids = item["masks"].long().clamp(max=len(PALETTE) - 1)
        item["frames"] = PALETTE[ids].permute(0, 3, 1, 2).to(torch.uint8)
        return item


class MaskOracle:
    """``images [B, 3, H, W]`` (normalised with ``std``) -> ``[B, h, w, 8]`` per-patch id
    fractions, decoded from :class:`PaintedVideos` frames.

    Args:
        patch_size: pixels per patch side.
        std: the std the protocol normalised with (the video protocol's default is DINO's).
    """

    def __init__(self, patch_size: int = 8, std: Sequence[float] = (0.228, 0.224, 0.225)) -> None:
        self.patch_size = patch_size
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        rgb = (images.cpu() * self.std + mean) * 255
        dist = ((rgb[:, None] - PALETTE.view(1, -1, 3, 1, 1)) ** 2).sum(2)
        onehot = F.one_hot(dist.argmin(1), len(PALETTE)).permute(0, 3, 1, 2).float()
        return F.avg_pool2d(onehot, self.patch_size).permute(0, 2, 3, 1).to(images.device)
