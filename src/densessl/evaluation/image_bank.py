"""Image-level feature banks for the classification protocols (k-NN, linear classifier).

DINO's transform for evaluation (facebookresearch/dino @7c446df, eval_knn.py and
eval_linear.py ``val_transform``): ``Resize(256, interpolation=3)`` (short side, bicubic),
``CenterCrop(224)``, ``ToTensor``, ``Normalize((0.485, 0.456, 0.406), (0.229, 0.224,
0.225))``; one feature per image (:func:`~densessl.evaluation.image_features.image_features`).

Differences: the resize is torch's antialiased bicubic on float pixels (PIL's bicubic on
uint8 in torchvision), so pixels differ by about one grey level.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from densessl.evaluation.image_features import image_features, last_blocks_cls
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize, to_float

__all__ = ["center_crop_view", "feature_bank"]


def center_crop_view(image: Tensor, resize: int, crop: int) -> Tensor:
    """``uint8 [3, H, W]`` → float ``[3, crop, crop]`` in ``[0, 1]``: short side to
    ``resize`` (bicubic, antialiased), then the central ``crop`` square."""
    x = to_float(image).unsqueeze(0)
    h, w = x.shape[-2:]
    if min(h, w) != resize:
        # torchvision's Resize(int): short side = resize, long side truncated
        size = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the resized image {h}x{w}")
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    return x[0, :, top : top + crop, left : left + crop]


class _Views(Dataset):
    def __init__(self, data: Dataset, resize: int, crop: int, mean: Any, std: Any) -> None:
        self.data, self.resize, self.crop, self.mean, self.std = data, resize, crop, mean, std

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        item = self.data[i]
        view = center_crop_view(item["image"], self.resize, self.crop)
        return normalize(view, self.mean, self.std), int(item["label"]), int(item["index"])


@torch.no_grad()
def feature_bank(
    extractor: Any,
    data: Dataset,
    *,
    resize: int,
    crop: int,
    pool: str = "auto",
    batch_size: int = 128,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "features",
    n_last_blocks: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, str]:
    """Features ``[N, D]`` (float32, on ``device``), labels ``[N]`` (int64), the items'
    ``index`` values ``[N]`` and the pooling used (``"cls"`` or ``"mean_patches"``) for every
    item of ``data``, in order. ``n_last_blocks``: DINO eval_linear.py's concatenated CLS
    of the last blocks (:func:`~densessl.evaluation.image_features.last_blocks_cls`) instead
    of the final one."""
    loader = DataLoader(
        _Views(data, resize, crop, mean, std), batch_size=batch_size, num_workers=num_workers
    )
    feats, labels, indices, pooled = [], [], [], "cls"
    for images, target, index in tqdm(loader, desc=desc, disable=not progress, leave=False):
        if n_last_blocks is None:
            out, pooled = image_features(extractor, images.to(device), pool)
        else:
            out = last_blocks_cls(extractor, images.to(device), n_last_blocks, pool)
            _, pooled = image_features(extractor, images[:1].to(device), pool)
        feats.append(out.to(device))
        labels.append(target.to(device))
        indices.append(index)
    return torch.cat(feats), torch.cat(labels).long(), torch.cat(indices), pooled
