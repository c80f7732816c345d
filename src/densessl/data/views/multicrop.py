"""Multi-crop views that remember where they came from.

Every crop carries its box ``(x1, y1, x2, y2)`` in original-image pixels and its horizontal
flip flag, so dense methods can relate patches of different views (see
:mod:`densessl.ops.geometry`). Geometry is sampled first; photometric augmentation is applied
afterwards and never moves a pixel. All randomness comes from an explicit
:class:`torch.Generator`, so a sample depends only on ``(seed, epoch, index)`` — not on worker
count or process rank — which makes resume and distributed runs exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from densessl.data.views.photometric import PhotometricConfig, augment_photometric
from densessl.errors import brief
from densessl.ops.geometry import box_area, box_intersection

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewsConfig:
    """Multi-crop geometry (DINO / Leopart style).

    Attributes:
        num_global / global_size / global_scale: count, output side (px) and area-fraction
            range of the global crops. DINO: 2, 224, (0.4, 1); SelfPatch/Leopart (0.25, 1).
        num_local / local_size / local_scale: the same for local crops (DINO: 8 x 96 px,
            (0.05, 0.4); Leopart: 4 x 96 px, (0.05, 0.25)).
        ratio: aspect-ratio range of the random resized crop.
        flip_prob: horizontal flip probability (Leopart uses 0: no flips).
        flip_first: False never flips the first crop (LOCA's reference view); the others
            keep ``flip_prob``.
        min_overlap: Leopart's rejection sampling; every crop after the first must overlap
            each earlier global crop by more than ``min_overlap`` x image area (twice that
            for the second global crop). 0 disables it.
        max_tries: redraws per crop before keeping the best-overlapping candidate.
        nested: every crop after the first is sampled *inside the first crop* (FLSL: the
            student views are crops of the teacher view): its box lies within the first
            box and its scale range is a fraction of the first crop's area. Boxes stay in
            original-image pixels and every crop is still resampled once from the image.
        first_scale: area-fraction range of the first crop only (FLSL's teacher view,
            (0.8, 1)); None = ``global_scale``.
        interpolation: ``"bicubic"`` (DINO) or ``"bilinear"`` (Leopart).
        photometric: colour jitter / grayscale / blur / solarize settings.
        local_photometric: other settings for the local crops (None: ``photometric``), e.g.
            stronger colour augmentation on the small student-only views while the teacher's
            global views keep the milder one (the local crops must then match the global
            targets by what the colour change leaves: texture, shape, layout).
        mean, std: normalisation applied last.
    """

    num_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    num_local: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    flip_first: bool = True
    min_overlap: float = 0.0
    max_tries: int = 50
    nested: bool = False
    first_scale: tuple[float, float] | None = None
    interpolation: str = "bicubic"
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    local_photometric: PhotometricConfig | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.num_global < 1:
            raise ValueError(f"views.num_global must be >= 1, got {self.num_global}")
        if self.num_local < 0:
            raise ValueError(f"views.num_local must be >= 0, got {self.num_local}")
        for name in ("global_scale", "local_scale", "ratio", "first_scale"):
            if getattr(self, name) is None:
                continue
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"views.{name} must satisfy 0 < low <= high, got ({lo}, {hi})")
        if self.global_scale[1] > 1 or self.local_scale[1] > 1:
            raise ValueError("views.global_scale and views.local_scale must not exceed 1")
        if self.first_scale is not None and self.first_scale[1] > 1:
            raise ValueError("views.first_scale must not exceed 1")
        if self.nested and self.min_overlap > 0:
            raise ValueError(
                "views.nested places every crop inside the first one; views.min_overlap "
                "(Leopart's rejection sampling) does not apply: set it to 0"
            )
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError("views.global_size and views.local_size must be positive")
        if self.num_local and self.local_size > self.global_size:
            raise ValueError(
                f"views.local_size ({self.local_size}) is larger than views.global_size "
                f"({self.global_size}); local crops must be the smaller ones"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"views.flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                "views.interpolation must be 'bicubic' or 'bilinear', "
                f"got {brief(self.interpolation)}"
            )
        if not all(s > 0 for s in self.std):  # normalisation divides by it
            raise ValueError(f"views.std must be > 0 for every channel, got {list(self.std)}")

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local

    def view_sizes(self) -> list[int]:
        return [self.global_size] * self.num_global + [self.local_size] * self.num_local


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high_exclusive: int) -> int:
    return int(torch.randint(high_exclusive, (), generator=generator))


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box sampler (torchvision's algorithm) with an explicit generator.

    Returns an integer box ``(x1, y1, x2, y2)`` inside the ``height x width`` image.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(generator, height - h + 1)
            left = _randint(generator, width - w + 1)
            return left, top, left + w, top + h
    # Fallback: central crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class MultiCropViews:
    """Sample ``num_global + num_local`` crops of one image, with boxes and flips.

    Call with an RGB ``uint8`` tensor ``[3, H, W]`` and a generator. Returns a dict:

    * ``crops``: list of float tensors ``[3, s, s]`` (normalised), globals first;
    * ``boxes``: ``[n, 4]`` float crop boxes in original-image pixels;
    * ``flips``: ``[n]`` bool;
    * ``image_size``: ``[2]`` long ``(H, W)``.
    """

    def __init__(self, config: ViewsConfig | None = None) -> None:
        self.config = config or ViewsConfig()
        self._interpolation = (
            InterpolationMode.BICUBIC
            if self.config.interpolation == "bicubic"
            else InterpolationMode.BILINEAR
        )

    def sample_boxes(
        self, height: int, width: int, generator: torch.Generator
    ) -> list[tuple[int, int, int, int]]:
        """Sample all crop boxes of one image (with Leopart's rejection sampling if enabled,
        or inside the first crop when ``nested``)."""
        cfg = self.config
        scales = [cfg.global_scale] * cfg.num_global + [cfg.local_scale] * cfg.num_local
        if cfg.first_scale is not None:
            scales[0] = cfg.first_scale
        boxes: list[tuple[int, int, int, int]] = []
        for k, scale in enumerate(scales):
            if cfg.nested and k > 0:
                px1, py1, px2, py2 = boxes[0]
                x1, y1, x2, y2 = sample_crop_box(py2 - py1, px2 - px1, scale, cfg.ratio, generator)
                boxes.append((px1 + x1, py1 + y1, px1 + x2, py1 + y2))
                continue
            if cfg.min_overlap <= 0 or k == 0:
                boxes.append(sample_crop_box(height, width, scale, cfg.ratio, generator))
                continue
            threshold = cfg.min_overlap * height * width * (2.0 if k == 1 else 1.0)
            globals_so_far = torch.tensor(boxes[: min(k, cfg.num_global)], dtype=torch.float64)
            best, best_overlap = None, -1.0
            for _ in range(cfg.max_tries):
                candidate = sample_crop_box(height, width, scale, cfg.ratio, generator)
                inter, _ = box_intersection(
                    torch.tensor(candidate, dtype=torch.float64), globals_so_far
                )
                overlap = float(box_area(inter).min())
                if overlap > best_overlap:
                    best, best_overlap = candidate, overlap
                if overlap > threshold:
                    break
            assert best is not None
            boxes.append(best)
        return boxes

    def __call__(self, image: Tensor, generator: torch.Generator) -> dict[str, Any]:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"MultiCropViews expects an RGB uint8 tensor [3, H, W], got "
                f"{image.dtype} {tuple(image.shape)}"
            )
        cfg = self.config
        height, width = int(image.shape[1]), int(image.shape[2])
        boxes = self.sample_boxes(height, width, generator)
        crops, flips = [], []
        for k, ((x1, y1, x2, y2), size) in enumerate(zip(boxes, cfg.view_sizes(), strict=True)):
            crop = TF.resized_crop(
                image, y1, x1, y2 - y1, x2 - x1, [size, size], self._interpolation, antialias=True
            )
            flip_prob = cfg.flip_prob if k > 0 or cfg.flip_first else 0.0
            flip = flip_prob > 0 and float(torch.rand((), generator=generator)) < flip_prob
            if flip:
                crop = TF.horizontal_flip(crop)
            kind = "global1" if k == 0 else "global2" if k < cfg.num_global else "local"
            settings = cfg.photometric
            if kind == "local" and cfg.local_photometric is not None:
                settings = cfg.local_photometric
            crop = augment_photometric(crop, settings, kind, generator)
            crops.append(TF.normalize(crop, list(cfg.mean), list(cfg.std)))
            flips.append(flip)
        return {
            "crops": crops,
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "flips": torch.tensor(flips, dtype=torch.bool),
            "image_size": torch.tensor([height, width], dtype=torch.long),
        }


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one sample: depends only on (seed, epoch, index)."""
    mixed = (seed * 1_000_003 + epoch) * 2_654_435_761 + index
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


class MultiCropDataset(torch.utils.data.Dataset):
    """Wrap a dataset returning ``{"image": uint8 [3,H,W], ...}`` with multi-crop views.

    Call :meth:`set_epoch` before each epoch (the trainer does) so views change per epoch
    while staying reproducible.
    """

    def __init__(self, base: torch.utils.data.Dataset, views: MultiCropViews, seed: int = 0):
        self.base = base
        self.views = views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key`` is an index (uses :attr:`epoch`) or an ``(epoch, index)`` pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        sample = self.base[index]
        generator = sample_generator(self.seed, epoch, index)
        out = self.views(sample["image"], generator)
        out["index"] = index
        # Drawn after the crops (they are unchanged by it): the sample's key for methods that
        # need more randomness per image (densessl.ops.keyed_random), so that it too depends only
        # on (seed, epoch, index) and not on process rank or batch composition.
        out["key"] = int(torch.randint(2**62, (), generator=generator))
        return out


def collate_views(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch multi-crop samples.

    Returns ``crops`` (list over views of ``[B, 3, s, s]``), ``boxes`` ``[B, n, 4]``,
    ``flips`` ``[B, n]``, ``image_size`` ``[B, 2]``, ``index`` ``[B]`` and, when the samples
    carry one, ``key`` ``[B]`` int64 (see :mod:`densessl.ops.keyed_random`).
    """
    num_views = len(samples[0]["crops"])
    batch: dict[str, Any] = {
        "crops": [torch.stack([s["crops"][v] for s in samples]) for v in range(num_views)],
        "boxes": torch.stack([s["boxes"] for s in samples]),
        "flips": torch.stack([s["flips"] for s in samples]),
        "image_size": torch.stack([s["image_size"] for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
    }
    if all("key" in s for s in samples):
        batch["key"] = torch.tensor([int(s["key"]) for s in samples], dtype=torch.long)
    return batch


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch (lists included) to ``device``, non-blocking."""

    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}


def group_by_resolution(crops: Sequence[Tensor]) -> list[tuple[list[int], Tensor]]:
    """Group consecutive views of the same resolution into one batch (DINO's multi-crop trick).

    Args:
        crops: list over views of ``[B, 3, s, s]``.

    Returns:
        A list of ``(view_indices, stacked)`` where ``stacked`` is ``[len(view_indices)*B, 3,
        s, s]`` in view-major order, so one backbone call runs per resolution.
    """
    groups: list[tuple[list[int], Tensor]] = []
    start = 0
    for end in range(1, len(crops) + 1):
        if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
            indices = list(range(start, end))
            groups.append((indices, torch.cat([crops[i] for i in indices])))
            start = end
    return groups
