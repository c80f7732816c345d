"""Preprocessing and feature extraction shared by the dense evaluators.

Leopart-style evaluation (Ziegler & Asano, CVPR 2022; MkuuWaUjinga/leopart @7835701, the
validation transforms of ``experiments/linear_probing/eval_linear.py`` and
``experiments/overcluster/sup_overcluster.py``): images are resized to a square ``s x s``
ignoring the aspect ratio (bilinear, antialiased), scaled to ``[0, 1]`` and normalised with the
ImageNet mean/std; label maps are resized with nearest-neighbour interpolation. Resizing happens
per item (:class:`ResizedSegmentation`), so batches of images of different sizes stack.

The ImageNet std is ``(0.229, 0.224, 0.225)``. open-hummingbird-eval uses
``(0.229, 0.224, 0.255)`` (a typo); :data:`HUMMINGBIRD_LEGACY_STD` reproduces it.

:func:`sample_crop_box` and :func:`random_color_jitter` are the seeded paired-crop and
colour-jitter augmentations of the dense-retrieval memory.

Nearest label resizing (:func:`resize_label`) knows two rules (:data:`LABEL_RULES`):

* ``"pil"``: PIL's ``Image.resize(..., Image.NEAREST)``, which torchvision's
  ``T.Resize(..., InterpolationMode.NEAREST)`` calls on a PIL image: the pixel-centre rule,
  source index ``floor((i + 0.5) * in / out)``, with ``(i + 0.5) * in / out`` accumulated in
  double precision the way Pillow's ``ImagingScaleAffine`` does, so that it matches PIL on
  every size pair, ties included. Leopart resizes its label maps to 448 px this way
  (``T.Resize`` in the val paths, ``F.resized_crop`` in training). torch's
  ``mode="nearest-exact"`` is the same rule in float32 and picks the other source pixel
  where ``(i + 0.5) * in / out`` is an exact integer (e.g. 448 -> 100, output 62).
* ``"floor"``: torch's ``F.interpolate(mode="nearest")``, source index ``floor(i * in / out)``
  (a half-pixel shift against a bilinear, ``align_corners=False`` image resize); Leopart's
  ``F.interpolate`` calls from 448 px to the 100 px training / monitoring masks use it.

The linear probe picks its rules through ``LinearProtocol.label_resize``
(:mod:`densessl.evaluation.preprocess_labels`); :func:`resize_label` and
:class:`ResizedSegmentation` default to ``"floor"``, the rule the other evaluators use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "HUMMINGBIRD_LEGACY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_RULES",
    "ResizedSegmentation",
    "collate_segmentation",
    "eval_mode",
    "extract_features",
    "extractor_device",
    "make_loader",
    "nearest_index",
    "normalize",
    "random_color_jitter",
    "resize_image",
    "resize_label",
    "sample_crop_box",
    "to_float",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUMMINGBIRD_LEGACY_STD = (0.229, 0.224, 0.255)

#: Nearest-neighbour rules of :func:`resize_label` (see the module docstring).
LABEL_RULES = ("pil", "floor")

Extractor = Callable[[Tensor], Tensor]


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def to_float(image: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` to float ``[0, 1]``; float input is returned as float32."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()


def normalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """Channel-wise ``(x - mean) / std`` of a float ``[..., 3, H, W]`` image in ``[0, 1]``."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - m) / s


def resize_image(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear, antialiased resize of ``[3, H, W]`` or ``[B, 3, H, W]``; float ``[0, 1]`` out."""
    x = to_float(image)
    batched = x.ndim == 4
    x = x if batched else x.unsqueeze(0)
    size = _size(size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    return x if batched else x[0]


def nearest_index(n_in: int, n_out: int, rule: str = "floor") -> Tensor:
    """int64 ``[n_out]``: the source index of every output index of a nearest resize.

    ``"pil"``: ``floor(x_i)`` with ``x_0 = in / out / 2`` and ``x_{i+1} = x_i + in / out``
    summed in float64, as Pillow's nearest scaling does. ``"floor"``: the index torch's
    ``F.interpolate(mode="nearest")`` reads (taken from torch itself).

    Raises:
        ValueError: Unknown ``rule`` or a size below 1.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label resize rule {rule!r}; choose one of {LABEL_RULES}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    if rule == "floor":
        src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
        return F.interpolate(src, size=(n_out, 1), mode="nearest").view(n_out).long()
    step = n_in / n_out
    centres = np.add.accumulate(np.r_[step * 0.5, np.full(n_out - 1, step)])
    return torch.from_numpy(np.minimum(centres.astype(np.int64), n_in - 1))


def resize_label(label: Tensor, size: int | Sequence[int], rule: str = "floor") -> Tensor:
    """Nearest resize of a label map ``[H, W]`` or ``[B, H, W]`` by ``rule``; int64 out.

    Args:
        label: Label map(s); any integer (or integral float) dtype.
        size: Output side or ``(h, w)``.
        rule: ``"floor"`` (torch ``"nearest"``) or ``"pil"`` (PIL ``NEAREST``); see the
            module docstring.
    """
    batched = label.ndim == 3
    x = label if batched else label.unsqueeze(0)
    size = _size(size)
    if tuple(x.shape[-2:]) != size:
        rows = nearest_index(x.shape[-2], size[0], rule).to(x.device)
        cols = nearest_index(x.shape[-1], size[1], rule).to(x.device)
        x = x.index_select(-2, rows).index_select(-1, cols)
    x = x.long()
    return x if batched else x[0]


def sample_crop_box(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    gen: torch.Generator,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)``, seeded.

    torchvision's sampling rule: up to 10 draws of an area fraction from ``scale`` and a
    log-uniform aspect ratio from ``ratio``; the first box that fits is placed uniformly;
    otherwise the central crop with the aspect ratio clamped to ``ratio``. Apply the same
    box to the image and its label map for a paired crop.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_color_jitter(
    image: Tensor,
    gen: torch.Generator,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    hue: float = 0.1,
    p: float = 0.5,
) -> Tensor:
    """Seeded colour jitter of a float ``[3, H, W]`` image in ``[0, 1]``.

    Brightness, contrast, saturation and hue are each applied with probability ``p``, in
    that order (open-hummingbird-eval's ``RandomApply([ColorJitter(x)])`` chain). Factors are
    drawn from ``U[max(0, 1 - s), 1 + s]`` (hue shift from ``U[-s, s]``); two draws are made
    per operation whether or not it is applied, so the stream of ``gen`` is fixed.
    """
    for op, strength in (
        (TF.adjust_brightness, brightness),
        (TF.adjust_contrast, contrast),
        (TF.adjust_saturation, saturation),
        (TF.adjust_hue, hue),
    ):
        apply, u = torch.rand(2, generator=gen).tolist()
        if strength > 0 and apply < p:
            if op is TF.adjust_hue:
                image = op(image, (2 * u - 1) * strength)
            else:
                lo = max(0.0, 1 - strength)
                image = op(image, lo + (1 + strength - lo) * u)
    return image


class ResizedSegmentation(Dataset):
    """Wrap a labeled dataset so every item has the same size.

    Items become ``{"image": float [3, s, s] normalised, "label": int64 [m, m],
    "index": int}``.

    Args:
        dataset: Labeled dataset (items ``{"image": uint8 [3, H, W], "label": [H, W],
            "index": int}``).
        image_size: Side (or ``(h, w)``) of the resized image.
        mask_size: Side of the resized label map (default: ``image_size``).
        mean: Normalisation mean.
        std: Normalisation std.
        label_resize: ``label [H, W] -> int64 [m, m]``, replacing the default
            ``resize_label(label, mask_size)`` (floor rule); it must be picklable for
            DataLoader workers (a module-level function or a ``functools.partial`` of one).
    """

    def __init__(
        self,
        dataset: Dataset,
        image_size: int | Sequence[int],
        mask_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        label_resize: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.dataset = dataset
        self.image_size = _size(image_size)
        self.mask_size = _size(mask_size) if mask_size is not None else self.image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.label_resize = label_resize
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"std must be three numbers > 0 (one per channel), got {self.std}")

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        image = normalize(resize_image(item["image"], self.image_size), self.mean, self.std)
        label = torch.as_tensor(item["label"])
        if self.label_resize is None:
            label = resize_label(label, self.mask_size)
        else:
            label = self.label_resize(label)
        return {"image": image, "label": label, "index": int(item.get("index", i))}


def collate_segmentation(batch: list[dict]) -> dict:
    """Stack same-size items into ``{"image": [B, 3, H, W], "label": [B, h, w], "index": [B]}``."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.int64),
    }


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In-order loader with :func:`collate_segmentation`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_segmentation,
    )


@contextmanager
def eval_mode(extractor: object) -> Iterator[None]:
    """Put an ``nn.Module`` extractor in eval mode for the duration, then restore its mode."""
    if not isinstance(extractor, nn.Module):
        yield
        return
    was_training = extractor.training
    extractor.eval()
    try:
        yield
    finally:
        extractor.train(was_training)


def extractor_device(extractor: object) -> torch.device:
    """Device of an ``nn.Module`` extractor's first parameter or buffer; CPU otherwise."""
    if isinstance(extractor, nn.Module):
        for tensor in (*extractor.parameters(), *extractor.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(extractor: Extractor, images: Tensor) -> Tensor:
    """Run the extractor and validate its ``[B, h, w, D]`` output (returned as float32).

    Raises:
        ValueError: If the output is not a ``[B, h, w, D]`` tensor.
    """
    feats = extractor(images)
    if not isinstance(feats, Tensor) or feats.ndim != 4 or feats.shape[0] != images.shape[0]:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"extractor must return [B, h, w, D] patch features, got {shape}")
    return feats.float()
