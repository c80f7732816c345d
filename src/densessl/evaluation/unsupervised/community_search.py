"""Map helpers and the community-detection search of the fully-unsupervised protocol.

:func:`search_communities` runs the grid of community-detection settings of
:class:`~densessl.evaluation.unsupervised.settings.UnsupervisedProtocol`: for every
``k_community`` the foreground is clustered once and its co-occurrence graph built over
train + val; for every ``weight_threshold`` x ``markov_time`` (Infomap) or ``resolution``
(Leiden) the partitions of all ``cd_seeds`` are scored on the **train labels**; the best
setting (a valid one first: :func:`partition_is_valid`, Leopart's ``PredsmIoU`` asserts) is
then scored on val. Partitions do not depend on the split, so val reuses them.

Scoring folds a ``[clusters, classes]`` confusion matrix by the partition (merging clusters
adds their rows) and matches the merged ids to classes with the Hungarian algorithm, which
equals merging the label maps first and scoring them. As in Leopart's ``PredsmIoU(C, C)``
(MkuuWaUjinga/leopart @7835701, ``experiments/utils.py``) only merged ids ``0 .. C-1`` are
matched: community ids are 1-based, so with ``C`` communities the last one's pixels count as
background, and such a partition is valid when every cluster is in a community.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from densessl.evaluation.miou import ConfusionMatrix, fold_confusion, hungarian_match, iou_per_class
from densessl.evaluation.unsupervised.community import (
    cooccurrence_matrix,
    cooccurrence_offsets,
    find_communities,
    graph_edges,
    merge_clusters,
)
from densessl.evaluation.unsupervised.settings import UnsupervisedProtocol

__all__ = [
    "confusion_of_maps",
    "mean_std",
    "pixel_weights",
    "score_partition",
    "search_communities",
    "upsample_maps",
]


def _nearest_index(n_in: int, n_out: int) -> Tensor:
    """Source index of every output position under ``F.interpolate(mode="nearest")``."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return F.interpolate(src, size=n_out, mode="nearest").view(n_out).long()


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of ``[N, h, w]`` integer or bool maps to ``size`` (torch's rule)."""
    rows = _nearest_index(maps.shape[1], size[0]).to(maps.device)
    cols = _nearest_index(maps.shape[2], size[1]).to(maps.device)
    return maps[:, rows][:, :, cols]


def pixel_weights(h: int, w: int, size: tuple[int, int]) -> Tensor:
    """int64 ``[h, w]``: how many pixels nearest upsampling to ``size`` gives each token."""
    rows = torch.bincount(_nearest_index(h, size[0]), minlength=h)
    cols = torch.bincount(_nearest_index(w, size[1]), minlength=w)
    return rows.view(h, 1) * cols.view(1, w)


def confusion_of_maps(
    maps: Tensor, labels: Tensor, num_ids: int, num_classes: int, chunk: int = 256
) -> Tensor:
    """``[num_ids, num_classes]`` counts of token maps (upsampled to the labels), 255 ignored."""
    cm = ConfusionMatrix(num_classes, num_ids, ignore_index=255)
    size = (labels.shape[-2], labels.shape[-1])
    for s in range(0, maps.shape[0], chunk):
        cm.update(upsample_maps(maps[s : s + chunk], size), labels[s : s + chunk])
    return cm.confusion.cpu()


def score_partition(
    confusion: Tensor, mapping: Tensor, num_pred: int | None = None
) -> tuple[float, list[float], int]:
    """Merge the rows of ``confusion`` by ``mapping`` and Hungarian-match the merged ids.

    Args:
        confusion: ``[K, C]`` pixel counts of the K clusters against the C classes.
        mapping: int64 ``[K]`` merged id of every cluster (0: in no community).
        num_pred: score as Leopart's ``PredsmIoU(num_pred, C)`` does (MkuuWaUjinga/leopart
            @7835701, ``experiments/utils.py``): only ids ``0 .. num_pred - 1`` take part in
            the matching; pixels of higher ids stay background (class 0). None: every id
            takes part and the unmatched ones count as background.

    Returns:
        ``(mIoU, per-class IoU, number of merged ids)``.
    """
    num_ids = int(mapping.max()) + 1
    merged = torch.zeros(num_ids, confusion.shape[1], dtype=confusion.dtype)
    merged.index_add_(0, mapping, confusion)
    rest = None
    if num_pred is not None and num_ids > num_pred:
        rest = merged[num_pred:].sum(dim=0)
        merged = merged[:num_pred]
    folded = fold_confusion(merged, hungarian_match(merged))
    if rest is not None:
        folded[0] += rest
    iou = iou_per_class(folded)
    return float(iou.mean()), iou.tolist(), num_ids


def partition_is_valid(confusion: Tensor, mapping: Tensor, num_pred: int) -> bool:
    """Leopart's check of a merged partition: at most ``num_pred`` distinct ids with pixels
    and no id above ``num_pred`` (``PredsmIoU.compute``'s asserts; ids are 1-based
    communities plus 0 for clusters in none, so ``num_pred`` communities covering every
    cluster pass)."""
    counts = torch.zeros(int(mapping.max()) + 1, dtype=confusion.dtype)
    counts.index_add_(0, mapping, confusion.sum(dim=1))
    used = torch.nonzero(counts > 0).flatten()
    return len(used) <= num_pred and (len(used) == 0 or int(used.max()) <= num_pred)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def search_communities(
    cluster_foreground: Callable[[int, int], Tensor],
    num_train: int,
    train_labels: Tensor,
    val_labels: Tensor,
    p: UnsupervisedProtocol,
    num_classes: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Choose the community-detection settings on train, score them on val.

    Args:
        cluster_foreground: ``(k, seed) -> [N, h, w]`` token maps of train then val
            images: foreground clusters ``0..k-1``, background ``k``.
        num_train: Train images at the front of those maps.
        train_labels / val_labels: ``[N, m, m]`` protocol labels (0 background, 255 ignore).
        p: Settings (``k_community``, ``weight_threshold``, scales, ``cd_seeds``, ...).
        num_classes: Background + foreground classes.
        progress: tqdm over the grid.

    Returns:
        ``{"method", "chosen", "chosen_with", "train_miou", "valid", "matching",
        "miou_mean", "miou_std", "per_seed", "num_ids", "per_class_iou_mean", "seeds",
        "search": [one entry per setting]}``.
    """
    scale_name, scales = p.scales
    num_modules = p.num_communities or (num_classes - 1)
    offsets = cooccurrence_offsets((1, 2), p.fix_angle_typo)
    size = (train_labels.shape[-2], train_labels.shape[-1])
    trials: list[dict[str, Any]] = []
    best: tuple[tuple[bool, float], dict[str, Any], Tensor, list[Tensor]] | None = None
    total = len(p.k_community) * len(p.weight_threshold) * len(scales)
    bar = tqdm(total=total, desc="unsupervised: CD search", disable=not progress, leave=False)
    for k in p.k_community:
        maps = cluster_foreground(int(k), p.seed)
        num_ids = int(k) + 1
        matrix = cooccurrence_matrix(upsample_maps(maps, size), num_ids, offsets)
        conf_train = confusion_of_maps(maps[:num_train], train_labels, num_ids, num_classes)
        conf_val = confusion_of_maps(maps[num_train:], val_labels, num_ids, num_classes)
        for wt in p.weight_threshold:
            edges = graph_edges(matrix, float(wt))
            for scale in scales:
                mappings = []
                for seed in p.cd_seeds:
                    found = find_communities(
                        edges,
                        p.community,
                        int(seed),
                        markov_time=float(scale),
                        resolution=float(scale),
                        num_modules=num_modules,
                    )
                    mappings.append(merge_clusters(found, num_ids))
                scored = [score_partition(conf_train, m, num_classes) for m in mappings]
                mean = sum(s[0] for s in scored) / len(scored)
                valid = all(partition_is_valid(conf_train, m, num_classes) for m in mappings)
                trial = {
                    "k_community": int(k),
                    "weight_threshold": float(wt),
                    scale_name: float(scale),
                    "num_edges": len(edges),
                    "train_miou": mean,
                    "valid": valid,
                    "num_ids": [s[2] for s in scored],
                }
                trials.append(trial)
                if best is None or (valid, mean) > best[0]:
                    best = ((valid, mean), trial, conf_val, mappings)
                bar.update()
    bar.close()
    assert best is not None
    _, trial, conf_val, mappings = best
    scored = [score_partition(conf_val, m, num_classes) for m in mappings]
    per_seed = [s[0] for s in scored]
    mean, std = mean_std(per_seed)
    return {
        "method": p.community,
        "chosen": {key: trial[key] for key in ("k_community", "weight_threshold", scale_name)},
        "chosen_with": "train-split labels",
        "train_miou": trial["train_miou"],
        "valid": trial["valid"],
        "matching": "hungarian",
        "miou_mean": mean,
        "miou_std": std,
        "per_seed": per_seed,
        "num_ids": [s[2] for s in scored],
        "per_class_iou_mean": torch.tensor([s[1] for s in scored]).mean(0).tolist(),
        "seeds": list(p.cd_seeds),
        "search": trials,
    }
