"""SPair-71k semantic correspondence by nearest-neighbour patch features (``correspondence``).

The protocol of Probe3D (mbanani/probe3d @a1f1464, evaluate_spair_correspondence.py,
evals/datasets/spair.py, configs/spair_correspondence.yaml) with the SPair-71k toolkit's
pairs and split (Min et al. 2019):

1. **Pairs**: every pair of the ``test`` split (12,234 pairs, 18 categories), with the
   pair annotation's keypoints (those visible in both images) and the target's box.
2. **Images**: padded to a square at the bottom/right with white (255) and resized to
   ``image_size`` (Probe3D: 800, Pillow's bicubic), ImageNet mean/std; keypoints scaled
   by ``image_size / max(H, W)``.
3. **Matching** (:mod:`densessl.evaluation.correspondence.matching`): L2-normalised patch
   features; the source keypoint's feature bilinearly sampled (``align_corners=True``); the
   most similar target patch, at its top-left corner (``predict_at="corner"``); soft-argmax
   off.
4. **PCK@0.1, normalised by the target object's box**: correct when the error is below
   ``alpha * max(box width, box height)`` (Probe3D's ``use_bbox=False``: the threshold
   ``max(bbox) / max(image side)`` in units of the padded image, i.e. the box's max side in
   pixels); the box is SPair's convention for PCK, the image side (``threshold="image"``) is
   PF-PASCAL's.
5. **Scores**: ``pck`` = the mean over categories of each category's PCK over its
   keypoints (Probe3D's headline); also ``pck_keypoints`` (all keypoints pooled, the
   "per-point" PCK of most SPair tables) and ``pck_pairs`` (the mean per-pair PCK).

Differences from Probe3D:

* Every test pair is scored; Probe3D scores 200 random pairs per category
  (``pairs_per_category=200`` draws a seeded subset, not the same pairs).
* Keypoints are the pair annotation's (Probe3D reads the same points from ImageAnnotation)
  and stay fractional after scaling (Probe3D truncates them to integers).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from densessl.evaluation.checks import check_fields
from densessl.evaluation.correspondence.matching import (
    PREDICT_AT,
    keypoint_features,
    pck,
    predict_keypoints,
)
from densessl.evaluation.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Extractor,
    eval_mode,
    extract_features,
    normalize,
)

__all__ = ["CorrespondenceProtocol", "evaluate_correspondence", "square_input"]

DIFFERENCES = [
    "every test pair is scored (Probe3D: 200 random pairs per category)",
    "keypoints from the pair annotation, fractional after scaling (Probe3D truncates)",
]


@dataclass
class CorrespondenceProtocol:
    """Settings of the keypoint-correspondence evaluation (defaults: Probe3D on SPair-71k).

    Attributes:
        image_size: side of the square network input (Probe3D: 800); a multiple of the
            backbone's patch size.
        alpha: PCK threshold as a fraction of the normaliser (0.1).
        threshold: ``"bbox"`` (the target box's max side, SPair's convention) or
            ``"image"`` (the target image's max side).
        pad_to_square: pad bottom/right with white before resizing (Probe3D) or stretch.
        align_corners: ``grid_sample`` convention for the source keypoint's feature
            (Probe3D: True).
        predict_at: the predicted position within the best cell: ``"corner"`` (Probe3D,
            its top-left corner) or ``"centre"``.
        soft_argmax: softmax-weighted mean of the cells instead of the argmax.
        soft_temperature: its temperature on cosine similarities.
        pairs_per_category: score a seeded random subset of this many pairs per category
            (None: every pair).
        seed: the subset's seed.
        batch_size: pairs per extractor call (2 images each).
    """

    image_size: int = 800
    alpha: float = 0.1
    threshold: str = "bbox"
    pad_to_square: bool = True
    align_corners: bool = True
    predict_at: str = "corner"
    soft_argmax: bool = False
    soft_temperature: float = 0.04
    pairs_per_category: int | None = None
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_fields(
            self,
            ints=dict(image_size=1, seed=0, batch_size=1),
            optional_ints={"pairs_per_category": 1},
            positive=("alpha", "soft_temperature"),
            bools=("pad_to_square", "align_corners", "soft_argmax"),
            choices={"threshold": ("bbox", "image"), "predict_at": PREDICT_AT},
        )

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> CorrespondenceProtocol:
        """CPU preset on the synthetic pairs: the views at their own size, PCK@0.1 by box,
        predictions at the cell centre (with 8-px cells on 96-px views Probe3D's corner
        convention alone halves an exact oracle's PCK: 0.23 vs 0.51)."""
        base = cls(image_size=image_size, predict_at="centre", batch_size=32)
        return replace(base, **overrides)


def square_input(image: Tensor, size: int, pad: bool) -> tuple[Tensor, float, float]:
    """uint8 ``[3, H, W]`` -> normalised ``[3, size, size]`` and the x / y scale factors
    from original pixels to input pixels: white bottom/right padding to a square when
    ``pad``, then Pillow's bicubic resize (what Probe3D's torchvision ``Resize`` runs)."""
    _, h, w = image.shape
    x = image.cpu()
    if pad:
        side = max(h, w)
        x = F.pad(x, (0, side - w, 0, side - h), value=255)
        sx = sy = size / side
    else:
        sx, sy = size / w, size / h
    if tuple(x.shape[-2:]) != (size, size):
        pil = Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    return normalize(x.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD), sx, sy


def _subset(pairs: Any, p: CorrespondenceProtocol) -> list[int]:
    if p.pairs_per_category is None:
        return list(range(len(pairs)))
    by_cat: dict[str, list[int]] = defaultdict(list)
    categories = getattr(pairs, "pairs", None)
    for i in range(len(pairs)):
        cat = categories[i]["category"] if categories is not None else pairs[i]["category"]
        by_cat[cat].append(i)
    gen = torch.Generator().manual_seed(p.seed)
    keep = []
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        order = torch.randperm(len(idx), generator=gen)[: p.pairs_per_category]
        keep += [idx[int(j)] for j in order]
    return sorted(keep)


def match_pair(item: dict[str, Any], feats: Tensor, p: CorrespondenceProtocol) -> dict[str, Any]:
    """Errors and correctness of one pair's keypoints (input pixels), from the L2-normalised
    ``[2, D, h, w]`` features of its source and target inputs."""
    ssx, ssy = _scales(item["source"], p)
    tsx, tsy = _scales(item["target"], p)
    src_kps = item["source_kps"].float() * torch.tensor([ssx, ssy])
    trg_kps = item["target_kps"].float() * torch.tensor([tsx, tsy])
    query = keypoint_features(feats[0], src_kps.to(feats.device), p.image_size, p.align_corners)
    pred = predict_keypoints(
        query, feats[1], p.image_size, p.predict_at, p.soft_argmax, p.soft_temperature
    ).cpu()
    errors = (pred - trg_kps).norm(dim=1)
    if p.threshold == "bbox":
        x1, y1, x2, y2 = item["bbox"].float().tolist()
        norm = max((x2 - x1) * tsx, (y2 - y1) * tsy)
    else:
        _, h, w = item["target"].shape
        norm = max(w * tsx, h * tsy)
    correct = pck(errors, torch.full_like(errors, norm), p.alpha)
    return {"errors": errors, "correct": correct, "threshold_px": norm}


def _scales(image: Tensor, p: CorrespondenceProtocol) -> tuple[float, float]:
    _, h, w = image.shape
    if p.pad_to_square:
        return p.image_size / max(h, w), p.image_size / max(h, w)
    return p.image_size / w, p.image_size / h


def _pair_features(
    extractor: Extractor, items: list[dict[str, Any]], p: CorrespondenceProtocol, device: Any
) -> Tensor:
    """``[N, 2, D, h, w]`` L2-normalised features of N pairs (one extractor call)."""
    inputs = [
        square_input(item[k], p.image_size, p.pad_to_square)[0]
        for item in items
        for k in ("source", "target")
    ]
    feats = extract_features(extractor, torch.stack(inputs).to(device))
    feats = F.normalize(feats.permute(0, 3, 1, 2), dim=1)
    return feats.reshape(len(items), 2, *feats.shape[1:])


def _record(item: dict[str, Any], out: dict[str, Any], per_cat: dict, per_pair: list) -> None:
    n, c = len(out["correct"]), int(out["correct"].sum())
    stats = per_cat[item["category"]]
    stats[0], stats[1], stats[2] = stats[0] + 1, stats[1] + n, stats[2] + c
    per_pair.append(
        {
            "name": item["name"],
            "category": item["category"],
            "num_keypoints": n,
            "num_correct": c,
            "mean_error_px": float(out["errors"].mean()),
        }
    )


@torch.no_grad()
def evaluate_correspondence(
    extractor: Extractor,
    pairs: Any,
    settings: CorrespondenceProtocol,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """PCK@alpha of nearest-neighbour keypoint transfer over ``pairs``.

    Returns:
        ``pck`` (mean over categories), ``pck_keypoints`` (pooled), ``pck_pairs`` (mean per
        pair), ``per_category`` (``pck``, ``num_pairs``, ``num_keypoints``), ``per_pair``
        (``name``, ``category``, ``num_keypoints``, ``num_correct``, ``mean_error_px``),
        counts and ``differences_from_official``.
    """
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # pairs, kps, correct
    per_pair = []
    indices = _subset(pairs, settings)
    bar = tqdm(total=len(indices), desc="keypoint pairs", disable=not progress)
    with eval_mode(extractor), bar:
        for start in range(0, len(indices), settings.batch_size):
            items = [pairs[i] for i in indices[start : start + settings.batch_size]]
            feats = _pair_features(extractor, items, settings, device)
            for item, pair_feats in zip(items, feats, strict=True):
                _record(item, match_pair(item, pair_feats, settings), per_cat, per_pair)
            bar.update(len(items))
    categories = {
        cat: {"pck": s[2] / s[1], "num_pairs": s[0], "num_keypoints": s[1]}
        for cat, s in sorted(per_cat.items())
    }
    total_kps = sum(s[1] for s in per_cat.values())
    return {
        "pck": sum(c["pck"] for c in categories.values()) / max(len(categories), 1),
        "pck_keypoints": sum(s[2] for s in per_cat.values()) / max(total_kps, 1),
        "pck_pairs": sum(r["num_correct"] / r["num_keypoints"] for r in per_pair)
        / max(len(per_pair), 1),
        "alpha": settings.alpha,
        "per_category": categories,
        "per_pair": per_pair,
        "num_pairs": len(per_pair),
        "num_keypoints": total_kps,
        "differences_from_official": DIFFERENCES,
    }


def describe_correspondence(p: CorrespondenceProtocol) -> str:
    """The settings of a correspondence run in one line."""
    how = "soft-argmax" if p.soft_argmax else f"argmax at cell {p.predict_at}"
    subset = "all pairs" if p.pairs_per_category is None else f"{p.pairs_per_category}/category"
    return (
        f"{p.image_size} px {'padded' if p.pad_to_square else 'stretched'} square; NN cosine, "
        f"{how}; PCK@{p.alpha:g} by {p.threshold} max side; {subset}"
    )


def summarize_correspondence(
    p: CorrespondenceProtocol, results: dict[str, Any]
) -> list[dict[str, Any]]:
    """Headline rows: PCK averaged over categories (Probe3D) and over keypoints pooled."""
    metric = f"PCK@{p.alpha:g}"
    return [
        {
            "result": "PCK (mean over categories)",
            "metric": metric,
            "miou": results["pck"],
            "std": None,
            "matching": f"{len(results['per_category'])} categories",
        },
        {
            "result": "PCK (keypoints pooled)",
            "metric": metric,
            "miou": results["pck_keypoints"],
            "std": None,
            "matching": f"{results['num_keypoints']} keypoints",
        },
    ]
