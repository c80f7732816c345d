"""Ground truth as features: a sanity check of the dense evaluators.

If the evaluator is right, features that *are* the labels must score (almost) perfectly.
:class:`LabelPaintedDataset` replaces every image of a segmentation dataset by its label map
painted in a fixed palette (one well-separated colour per class, one more for ignored
pixels); :class:`LabelOracle` reads the classes back off the colours and returns, per patch,
the fraction of its pixels in each class (one-hot ground truth, average-pooled). With
``patch_size=1`` the features are the pixel labels themselves and a linear probe should reach
~100 % mIoU; with the backbone's patch size they show how much the patch grid alone costs.

The painted images go through the evaluators' usual preprocessing (resizing, crops, ImageNet
normalisation); colours blended at class borders by resizing are decoded to the nearest
palette entry.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["LabelOracle", "LabelPaintedDataset", "label_palette"]


def label_palette(num_colours: int) -> Tensor:
    """``[num_colours, 3]`` uint8 colours: the first points of the coarsest RGB lattice that
    has enough of them (levels 0/255 up to 8 colours, 0/128/255 up to 27, ...)."""
    if num_colours < 1:
        raise ValueError(f"num_colours must be >= 1, got {num_colours}")
    levels = 2
    while levels**3 < num_colours:
        levels += 1
    values = torch.linspace(0, 255, levels).round().to(torch.uint8)
    grid = torch.cartesian_prod(values, values, values)
    return grid[:num_colours].contiguous()


class LabelPaintedDataset:
    """A segmentation dataset whose images are its label maps painted with :func:`label_palette`.

    Class ``c`` gets colour ``c``; ``ignore_index`` pixels get colour ``num_classes``. Labels,
    indices and the dataset's attributes (``num_classes``, ``class_names``, ``ignore_index``)
    are passed through unchanged.
    """

    def __init__(self, dataset: Any, num_classes: int | None = None) -> None:
        self.dataset = dataset
        self.num_classes = int(num_classes if num_classes is not None else dataset.num_classes)
        self.ignore_index = int(getattr(dataset, "ignore_index", 255))
        self.class_names = getattr(dataset, "class_names", None)
        self.palette = label_palette(self.num_classes + 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        label = torch.as_tensor(item["label"]).long()
        index = torch.where(label == self.ignore_index, self.num_classes, label)
        if int(index.max()) > self.num_classes or int(index.min()) < 0:
            raise ValueError(
                f"item {i}: label values outside 0..{self.num_classes - 1} and "
                f"{self.ignore_index} (ignore)"
            )
        item["image"] = self.palette[index].permute(2, 0, 1).contiguous()
        return item


class LabelOracle(nn.Module):
    """Extractor ``images [B, 3, H, W]`` (ImageNet-normalised painted labels) → class fractions
    ``[B, H / p, W / p, num_classes + 1]`` per ``p x p`` patch (the last channel: ignored
    pixels).

    Args:
        num_classes: classes of the painted dataset (the palette has one more colour).
        patch_size: pooling window ``p`` (1: pixel-exact one-hot labels).
    """

    def __init__(self, num_classes: int, patch_size: int = 1) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.num_classes = int(num_classes)
        self.patch_size = int(patch_size)
        self.register_buffer("palette", label_palette(self.num_classes + 1).float(), False)
        self.source = {"kind": "oracle", "description": f"one-hot labels, {patch_size}-px cells"}

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        rgb = (images.float() * std + mean) * 255.0
        palette = self.palette.to(images.device)
        distance = ((rgb[:, None] - palette.view(1, -1, 3, 1, 1)) ** 2).sum(2)  # [B, K, H, W]
        onehot = F.one_hot(distance.argmin(1), palette.shape[0]).permute(0, 3, 1, 2).float()
        if self.patch_size > 1:
            onehot = F.avg_pool2d(onehot, self.patch_size)
        return onehot.permute(0, 2, 3, 1).contiguous()
