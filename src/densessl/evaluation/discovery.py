"""Unsupervised single-object discovery with LOST, scored by CorLoc (``densessl eval discovery``).

Official pipeline (valeoai/LOST @fcedbecb644f18358a660ce58c739cc6374feda8, main_lost.py,
object_discovery.py, datasets.py; DINO ViT-S/16 CorLoc: VOC07 61.9, VOC12 64.0, COCO-20k
50.7, README):

1. Each image at full resolution: ``ToTensor``, ImageNet normalisation, zero-padded at the
   bottom and right to a multiple of the patch size (main_lost.py:185-192).
2. Features: the last block's attention keys of the patches, all heads concatenated, CLS
   dropped, no normalisation (:func:`~densessl.evaluation.image_features.last_block_keys`).
3. One box per image (:func:`~densessl.evaluation.lost.lost_box`, ``k_patches = 100``).
4. CorLoc = 100 · (images whose box has IoU >= 0.5 with any GT box) / images evaluated.

Splits: VOC07 / VOC12 ``trainval`` (difficult and truncated objects kept), COCO-20k.

Differences: ``features="patches"`` uses the final patch features instead of the keys (the
only choice for a plain callable extractor; the result's ``features`` says which was used).
``max_side`` (off by default) shrinks large images first, for speed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from densessl.evaluation.checks import check_fields
from densessl.evaluation.image_features import last_block_keys
from densessl.evaluation.lost import is_hit, lost_box
from densessl.evaluation.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_features,
    normalize,
    to_float,
)

__all__ = ["DiscoveryProtocol", "describe_discovery", "evaluate_discovery", "summarize_discovery"]

FEATURES = ("keys", "patches")


@dataclass
class DiscoveryProtocol:
    """Settings of LOST + CorLoc (defaults: LOST's main_lost.py).

    Attributes:
        k_patches: lowest-degree patches compared with the seed at expansion (100).
        features: ``keys`` (last-block attention keys, LOST) or ``patches`` (final patch
            features).
        iou_threshold: a box is correct at IoU >= this with any GT box (0.5).
        max_side: resize so the longer side is at most this (None: full resolution, LOST).
        batch_size: consecutive images of one size run together (1: LOST's loop; boxes do
            not depend on it).
        mean / std: normalisation (LOST: ImageNet's).
    """

    k_patches: int = 100
    features: str = "keys"
    iou_threshold: float = 0.5
    max_side: int | None = None
    batch_size: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        check_fields(
            self,
            ints={"k_patches": 1, "batch_size": 1},
            optional_ints={"max_side": 1},
            within={"iou_threshold": (0.0, 1.0)},
            choices={"features": FEATURES},
        )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("DiscoveryProtocol.mean and std need 3 values, std > 0")

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> DiscoveryProtocol:
        """CPU preset on the synthetic scenes: LOST's settings at the scenes' size, with
        ``k_patches`` scaled to the small grid (LOST's 100 are about a tenth of the ~900
        patches of a VOC image; a 64-patch scene would otherwise expand over every patch)."""
        patches = (image_size // 8) ** 2
        return replace(cls(k_patches=max(2, patches // 10), batch_size=32), **overrides)


def _prepare(image: torch.Tensor, p: DiscoveryProtocol, patch: int) -> torch.Tensor:
    x = to_float(image).unsqueeze(0)
    h, w = x.shape[-2:]
    if p.max_side is not None and max(h, w) > p.max_side:
        scale = p.max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True).clamp(0, 1)
    x = normalize(x, p.mean, p.std)
    h, w = x.shape[-2:]
    padded = x.new_zeros(1, 3, -(-h // patch) * patch, -(-w // patch) * patch)
    padded[..., :h, :w] = x
    return padded


@torch.no_grad()
def evaluate_discovery(
    extractor: Any,
    train: Any,
    val: Any,
    settings: DiscoveryProtocol,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """LOST's box on every image of ``val`` and its CorLoc (``train`` is unused).

    Returns:
        ``{"corloc" (percent), "hits", "num_images", "features", "per_image": [{"index",
        "name", "box", "seed", "best_iou", "hit"}]}``; boxes in the original image's pixels.
    """
    p = settings
    patch = int(getattr(extractor, "patch_size", 16))
    hits, per_image = 0, []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal hits
        x = torch.cat([_prepare(item["image"], p, patch) for item in batch]).to(device)
        h, w = x.shape[-2] // patch, x.shape[-1] // patch
        if p.features == "keys":
            feats = last_block_keys(extractor, x)
        else:
            feats = extract_features(extractor, x).reshape(len(batch), h * w, -1)
        for item, f in zip(batch, feats, strict=True):
            h0, w0 = item["image"].shape[-2:]
            scale = max(h0, w0) / p.max_side if p.max_side and max(h0, w0) > p.max_side else 1.0
            found = lost_box(f, (h, w), patch, (round(h0 / scale), round(w0 / scale)), p.k_patches)
            box = [v * scale for v in found["box"]] if scale != 1.0 else found["box"]
            gt = item["boxes"]
            hit, best = is_hit(box, gt, p.iou_threshold)
            hits += int(hit)
            per_image.append({"index": int(item["index"]), "name": str(item.get("name", "")),
                              "box": box, "seed": found["seed"], "num_gt": len(gt),
                              "best_iou": best, "hit": hit})  # fmt: skip
        batch.clear()

    for i in tqdm(range(len(val)), desc="LOST", disable=not progress, leave=False):
        item = val[i]
        if batch and (len(batch) >= p.batch_size or item["image"].shape != batch[0]["image"].shape):
            flush()
        batch.append(item)
    if batch:
        flush()
    total = max(1, len(per_image))
    return {"corloc": 100.0 * hits / total, "hits": hits, "num_images": len(per_image),
            "features": p.features, "per_image": per_image}  # fmt: skip


def describe_discovery(p: DiscoveryProtocol) -> str:
    """The settings in one line."""
    size = "full resolution" if p.max_side is None else f"longer side <= {p.max_side}"
    return f"LOST on last-block {p.features}, k={p.k_patches}; {size}; IoU >= {p.iou_threshold:g}"


def summarize_discovery(p: DiscoveryProtocol, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row: CorLoc."""
    return [{"result": "CorLoc", "miou": results["corloc"] / 100.0, "std": None,
             "matching": f"{results['hits']}/{results['num_images']} images",
             "metric": "CorLoc"}]  # fmt: skip
