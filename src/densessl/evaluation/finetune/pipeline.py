"""Training batches of ``densessl finetune seg``: mmseg's ADE20K train pipeline, seeded per step.

``LoadAnnotations`` -> ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))`` (keep ratio)
-> ``RandomCrop(512, cat_max_ratio=0.75)`` -> ``RandomFlip(0.5)`` -> ``PhotoMetricDistortion``
-> ``Normalize`` -> ``Pad(512, seg_pad_val=255)`` (mmseg 0.x ``mmseg/datasets/pipelines/
transforms.py``, used by both the SelfPatch and the Segmenter configs). Label maps arrive
from densessl's datasets already reduced (ADE20K: 0 -> 255, 1-150 -> 0-149).

Every random draw of step ``s`` comes from generators seeded with ``(seed, s)`` (which
images) and ``(seed, s, position)`` (each image's scale, crop, flip, distortion), so a resumed
run sees exactly the batches it would have seen, with any number of loader workers or
processes (``torchrun``: each process builds its slice of the global batch).

Differences from mmseg: images are resized with torch's antialiased bilinear (mmcv: cv2
bilinear); the photometric distortion works on RGB in [0, 1] with torchvision's colour
ops (mmcv: BGR float, its own HSV conversion), same ranges and probabilities (brightness
+-32/255, contrast and saturation x[0.5, 1.5], hue +-18 deg, each p 0.5, contrast before
or after the colour steps with p 0.5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.transforms.v2 import functional as TF

from densessl.evaluation.finetune.settings import FinetuneSettings
from densessl.evaluation.preprocess import normalize, resize_image, resize_label, to_float

__all__ = ["StepBatches", "keep_ratio_size", "step_batch"]


def keep_ratio_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest keep-ratio size within ``scale = (long, short)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator) -> bool:
    return bool(torch.rand((), generator=gen) < 0.5)


def _crop_box(label: Tensor, size: int, max_ratio: float, gen: torch.Generator) -> tuple[int, int]:
    """mmseg ``RandomCrop``: up to 10 draws while one class covers more than ``max_ratio``."""
    h, w = label.shape
    top = left = 0
    for _ in range(10):
        top = int(torch.randint(0, max(h - size, 0) + 1, (), generator=gen))
        left = int(torch.randint(0, max(w - size, 0) + 1, (), generator=gen))
        if max_ratio >= 1:
            break
        crop = label[top : top + size, left : left + size]
        _, counts = torch.unique(crop[crop != 255], return_counts=True)
        if len(counts) > 1 and float(counts.max()) / float(counts.sum()) < max_ratio:
            break
    return top, left


def _photometric(image: Tensor, gen: torch.Generator) -> Tensor:
    """``image`` float ``[3, H, W]`` in [0, 1] -> distorted (see the module docstring)."""
    if _chance(gen):
        image = (image + _uniform(gen, -32, 32) / 255).clamp(0, 1)
    contrast_first = _chance(gen)

    def contrast(x: Tensor) -> Tensor:
        return TF.adjust_contrast(x, _uniform(gen, 0.5, 1.5)) if _chance(gen) else x

    if contrast_first:
        image = contrast(image)
    if _chance(gen):
        image = TF.adjust_saturation(image, _uniform(gen, 0.5, 1.5))
    if _chance(gen):
        image = TF.adjust_hue(image, _uniform(gen, -18, 18) / 360)
    if not contrast_first:
        image = contrast(image)
    return image


def augment(
    item: dict[str, Any], s: FinetuneSettings, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One training view: ``(image [3, S, S] normalised, label [S, S] long, 255 = pad)``."""
    image, label = to_float(item["image"]), torch.as_tensor(item["label"]).long()
    ratio = _uniform(gen, *s.ratio_range)
    size = keep_ratio_size(*label.shape, (int(s.scale[0] * ratio), int(s.scale[1] * ratio)))
    image, label = resize_image(image, size), resize_label(label, size)
    top, left = _crop_box(label, s.crop_size, s.cat_max_ratio, gen)
    image = image[:, top : top + s.crop_size, left : left + s.crop_size]
    label = label[top : top + s.crop_size, left : left + s.crop_size]
    if _chance(gen):
        image, label = image.flip(-1), label.flip(-1)
    if s.photometric:
        image = _photometric(image, gen)
    image = normalize(image)
    out_image = image.new_zeros(3, s.crop_size, s.crop_size)
    out_label = label.new_full((s.crop_size, s.crop_size), 255)
    out_image[:, : image.shape[1], : image.shape[2]] = image
    out_label[: label.shape[0], : label.shape[1]] = label
    return out_image, out_label


def step_batch(
    dataset: Dataset, s: FinetuneSettings, step: int, shard: tuple[int, int] = (0, 1)
) -> tuple[Tensor, Tensor]:
    """The batch of ``step``: ``images [B / W, 3, S, S]``, ``labels [B / W, S, S]``.

    ``shard = (rank, W)``: process ``rank`` of ``W`` gets the ``rank``-th contiguous slice of
    the global batch; every image has its own generator (``seed, step, position``), so the
    ``W`` slices together are exactly the one-process batch.
    """
    gen = torch.Generator().manual_seed((s.seed + 1) * 1_000_003 + step)
    n = len(dataset)  # type: ignore[arg-type]
    indices = torch.randint(0, n, (s.batch_size,), generator=gen).tolist()
    rank, world = shard
    per = s.batch_size // world
    views = []
    for position in range(rank * per, (rank + 1) * per):
        own = torch.Generator().manual_seed(((s.seed + 1) * 1_000_003 + step) * 4099 + position)
        views.append(augment(dataset[indices[position]], s, own))
    return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


class StepBatches(IterableDataset):
    """Batches of steps ``start .. iterations - 1`` in order (workers take turns)."""

    def __init__(
        self, dataset: Dataset, settings: FinetuneSettings, start: int, shard: tuple[int, int]
    ) -> None:
        self.dataset, self.settings, self.start, self.shard = dataset, settings, int(start), shard

    def __iter__(self):  # type: ignore[no-untyped-def]
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + worker, self.settings.iterations, workers):
            yield step, *step_batch(self.dataset, self.settings, step, self.shard)
