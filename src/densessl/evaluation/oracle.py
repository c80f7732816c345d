"""Ground truth as features: a sanity check of the dense evaluators.

If the evaluator is right, features that *are* the labels must score (almost) perfectly.
:class:`LabelPaintedDataset` replaces every image of a segmentation dataset by its label map
painted in a fixed palette (one colour per class, one more for ignored pixels);
:class:`LabelOracle` reads the classes back off the colours and returns, per patch, the
fraction of its pixels in each class (one-hot ground truth, average-pooled). With
``patch_size=1`` the features are the pixel labels themselves and a linear probe should reach
~100 % mIoU; with the backbone's patch size they show how much the patch grid alone costs.

The labels are read by index (:func:`densessl.data.segmentation.files.read_label_png`); only
the painted image carries colours. It goes through the evaluators' usual preprocessing
(resizing, crops, ImageNet normalisation), so pixels at class borders come back as *blends*
of two or more palette colours. Two rules keep a blend from being read as a third class:

* The palette (:func:`label_palette`) lies on a sphere inside the RGB cube, so no palette
  colour is a mix of others: every point of a segment between two palette colours is more
  than twice :data:`PURE_TOLERANCE` away from every third palette colour (22 colours, the
  VOC case: 29.6; 151 colours: 4.3; 256 colours: 2.06; :func:`blend_margin`). A lattice
  palette fails this: with levels 0/128/255 the mix of black and (255, 0, 0) *is*
  (128, 0, 0), and the mix of VOC's background and ignore colours decoded to chair's, so
  chair's feature fired on every background / boundary edge and the probe learnt chair =
  background (chair IoU 0).
* A pixel within :data:`PURE_TOLERANCE` of a palette colour is that class; any other pixel
  is split between the two palette colours whose segment passes closest to it, in the
  proportions of its position on that segment (a two-colour blend read back exactly).

Photometric jitter (the dense-retrieval memory's colour jitter) moves colours off the palette
altogether; there the oracle is only approximate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "PURE_TOLERANCE",
    "LabelOracle",
    "LabelPaintedDataset",
    "blend_margin",
    "decode_palette",
    "label_palette",
]

#: Distance (RGB units, 0-255) within which a pixel counts as a pure palette colour.
PURE_TOLERANCE = 1.0

_CHUNK = 1 << 22  # pixel x pair entries per step of the blend search


def label_palette(num_colours: int) -> Tensor:
    """``[num_colours, 3]`` uint8 colours on the sphere of radius 127 centred in the RGB cube
    (a Fibonacci lattice: ``z_i = 1 - (2i + 1) / n``, longitude ``i`` x the golden angle),
    rounded to integers; no colour is a mix of the others (:func:`blend_margin`)."""
    if num_colours < 1:
        raise ValueError(f"num_colours must be >= 1, got {num_colours}")
    i = torch.arange(num_colours, dtype=torch.float64)
    z = 1 - (2 * i + 1) / num_colours
    r = torch.sqrt(1 - z * z)
    phi = i * math.pi * (3 - math.sqrt(5))
    points = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1)
    return (127.5 + 127 * points).round().to(torch.uint8)


def _pairs(n: int) -> tuple[Tensor, Tensor]:
    a, b = torch.triu_indices(n, n, offset=1)
    return a, b


def blend_margin(palette: Tensor) -> float:
    """Smallest distance from a palette colour to a segment between two other colours."""
    p = palette.double()
    best = math.inf
    for v in range(len(p)):
        others = torch.cat([p[:v], p[v + 1 :]])
        if len(others) < 2:
            continue
        ia, ib = _pairs(len(others))
        a, d = others[ia], others[ib] - others[ia]
        t = (((p[v] - a) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)
        best = min(best, float((p[v] - a - t[:, None] * d).norm(dim=-1).min()))
    return best


def decode_palette(rgb: Tensor, palette: Tensor, tolerance: float = PURE_TOLERANCE) -> Tensor:
    """Class fractions ``[N, K]`` of pixels ``rgb [N, 3]`` (0-255) painted with ``palette``.

    Within ``tolerance`` of a colour: one-hot. Otherwise the best two-colour blend: the pair
    whose segment passes closest, weights ``(1 - t, t)`` of the nearest point on it.
    """
    palette = palette.to(rgb)
    out = torch.zeros(rgb.shape[0], palette.shape[0], dtype=rgb.dtype, device=rgb.device)
    distance = torch.cdist(rgb, palette, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(1)
    pure = distance.gather(1, nearest[:, None])[:, 0] <= tolerance
    rows = torch.nonzero(pure)[:, 0]
    out[rows, nearest[rows]] = 1.0
    mixed = torch.nonzero(~pure)[:, 0]
    if len(mixed) == 0 or palette.shape[0] < 2:
        out[mixed, nearest[mixed]] = 1.0
        return out
    ia, ib = (x.to(rgb.device) for x in _pairs(palette.shape[0]))
    a, d = palette[ia], palette[ib] - palette[ia]
    dd = (d * d).sum(-1)
    step = max(1, _CHUNK // len(ia))
    for start in range(0, len(mixed), step):
        idx = mixed[start : start + step]
        rel = rgb[idx, None, :] - a[None]  # [m, P, 3]
        t = ((rel * d).sum(-1) / dd).clamp(0, 1)
        residual = (rel - t[..., None] * d).square().sum(-1)
        best = residual.argmin(1)
        tb = t.gather(1, best[:, None])[:, 0]
        out[idx, ia[best]] += 1 - tb
        out[idx, ib[best]] += tb
    return out


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
    pixels), decoded by :func:`decode_palette`.

    Args:
        num_classes: classes of the painted dataset (the palette has one more colour).
        patch_size: pooling window ``p`` (1: pixel-exact labels).
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
        b, _, h, w = images.shape
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        rgb = ((images.float() * std + mean) * 255.0).permute(0, 2, 3, 1).reshape(-1, 3)
        fractions = decode_palette(rgb, self.palette).view(b, h, w, -1)
        if self.patch_size > 1:
            pooled = F.avg_pool2d(fractions.permute(0, 3, 1, 2), self.patch_size)
            fractions = pooled.permute(0, 2, 3, 1)
        return fractions.contiguous()
