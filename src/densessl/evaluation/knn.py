"""DINO's weighted k-NN classifier on frozen image features (``densessl eval knn``).

Official pipeline (facebookresearch/dino @7c446df5b9f45747937fb0d72314eb9f7b66930a,
eval_knn.py ``extract_feature_pipeline`` and ``knn_classifier``):

1. Every train and val image: short side to 256 (bicubic), central 224 crop, ImageNet
   normalisation (:mod:`densessl.evaluation.image_bank`); the feature is the final CLS
   token (:func:`~densessl.evaluation.image_features.image_features`).
2. Features are L2-normalised; the similarity of a val image to every train image is the dot
   product (cosine).
3. Its ``k`` most similar train images vote for their class with weight
   ``exp(similarity / T)``; classes are ranked by total weight (``k = 20``, ``T = 0.07``;
   the script also prints 10, 100 and 200 neighbours, ``extra_neighbors``).
4. Top-1 / top-5 accuracy in percent over the val images (top-5 counts the first
   ``min(5, k)`` classes, as the script).

Differences: backbones without a CLS token (and plain callables) use the mean of their final
patch features (``pool="mean"`` forces it; the result's ``pooling`` says which was used).
The script splits the val set into ``N // 100`` images per chunk, which fails below 100 val
images; densessl chunks by ``chunk_size`` (results are the same). Ties in the ranking of
classes follow ``torch.sort`` (descending, stable here) where the script's sort is unstable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from densessl.evaluation.checks import check_fields, check_int_list
from densessl.evaluation.image_bank import feature_bank
from densessl.evaluation.image_features import POOLS
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["KNNProtocol", "describe_knn", "evaluate_knn", "knn_classify", "summarize_knn"]


@dataclass
class KNNProtocol:
    """Settings of the k-NN classifier (defaults: DINO's eval_knn.py on ImageNet).

    Attributes:
        num_neighbors: ``k``, neighbours that vote (DINO reports 20).
        extra_neighbors: further ``k`` values scored on the same features (the script's
            ``--nb_knn 10 20 100 200``; empty by default).
        temperature: ``T`` of the vote weight ``exp(sim / T)``.
        resize: short side before the crop (256).
        crop: side of the central crop fed to the backbone (224).
        pool: ``auto`` (CLS when the backbone has one, else mean of patches), ``cls``,
            ``mean``.
        batch_size: images per feature-extraction batch (128 per GPU).
        chunk_size: val images per similarity chunk (memory only; results do not change).
        mean / std: normalisation.
        num_workers: data-loader workers.
    """

    num_neighbors: int = 20
    extra_neighbors: tuple[int, ...] = ()
    temperature: float = 0.07
    resize: int = 256
    crop: int = 224
    pool: str = "auto"
    batch_size: int = 128
    chunk_size: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.extra_neighbors = tuple(self.extra_neighbors)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        check_fields(
            self,
            ints={"num_neighbors": 1, "resize": 1, "crop": 1, "batch_size": 1,
                  "chunk_size": 1, "num_workers": 0},
            positive=("temperature",),
            choices={"pool": POOLS},
        )  # fmt: skip
        if self.extra_neighbors:
            check_int_list(self, "extra_neighbors", 1)
        if self.crop > self.resize:
            raise ValueError(f"KNNProtocol.crop ({self.crop}) must be <= resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("KNNProtocol.mean and std need 3 values, std > 0")

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> KNNProtocol:
        """CPU preset on the synthetic scenes: the whole scene, no resize or crop."""
        base = cls(resize=image_size, crop=image_size, batch_size=64)
        return replace(base, **overrides)


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk_size: int = 1000,
) -> dict[str, Any]:
    """DINO's weighted k-NN vote on L2-normalised features.

    Args:
        train_features: ``[N, D]``; test_features ``[M, D]`` (normalised here).
        train_labels / test_labels: ``[N]`` / ``[M]`` class ids in ``[0, num_classes)``.
        k: neighbours (capped at ``N``); temperature: ``T``.

    Returns:
        ``{"top1", "top5"}`` in percent and ``"predictions"`` ``[M, min(5, C)]`` (the ranked
        classes of each test item).
    """
    bank = F.normalize(train_features.float(), dim=1, p=2).t()
    queries = F.normalize(test_features.float(), dim=1, p=2)
    k = min(k, bank.shape[1])
    top1 = top5 = 0
    ranked = []
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start : start + chunk_size] @ bank
        distances, indices = sim.topk(k, dim=1, largest=True, sorted=True)
        neighbours = train_labels.to(sim.device)[indices]  # [b, k]
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, neighbours, (distances / temperature).exp())
        order = votes.argsort(dim=1, descending=True, stable=True)
        correct = order.eq(test_labels[start : start + chunk_size].to(sim.device).view(-1, 1))
        top1 += int(correct[:, :1].sum())
        top5 += int(correct[:, : min(5, k)].sum())
        ranked.append(order[:, : min(5, num_classes)].cpu())
    total = max(1, queries.shape[0])
    return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total,
            "predictions": torch.cat(ranked)}  # fmt: skip


def evaluate_knn(
    extractor: Any,
    train: Any,
    val: Any,
    settings: KNNProtocol,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Extract the train and val features and score the k-NN classifier.

    Returns:
        ``{"top1", "top5", "pooling", "num_neighbors", "by_k": {k: {"top1", "top5"}},
        "per_item": [{"index", "label", "predictions"}], "num_train", "num_val"}``.
    """
    p = settings
    kw = {"resize": p.resize, "crop": p.crop, "pool": p.pool, "batch_size": p.batch_size,
          "mean": p.mean, "std": p.std, "num_workers": p.num_workers, "device": device,
          "progress": progress}  # fmt: skip
    train_f, train_l, _, pooling = feature_bank(extractor, train, desc="k-NN train", **kw)
    val_f, val_l, val_index, _ = feature_bank(extractor, val, desc="k-NN val", **kw)
    classes = int(val.num_classes)
    by_k: dict[int, dict[str, Any]] = {}
    for k in dict.fromkeys((p.num_neighbors, *p.extra_neighbors)):
        by_k[k] = knn_classify(
            train_f, train_l, val_f, val_l, k, p.temperature, classes, p.chunk_size
        )
    main = by_k[p.num_neighbors]
    per_item = [
        {"index": int(val_index[i]), "label": int(val_l[i]),
         "predictions": main["predictions"][i].tolist()}
        for i in range(len(val_l))
    ]  # fmt: skip
    return {
        "top1": main["top1"],
        "top5": main["top5"],
        "pooling": pooling,
        "num_neighbors": p.num_neighbors,
        "by_k": {str(k): {"top1": r["top1"], "top5": r["top5"]} for k, r in by_k.items()},
        "per_item": per_item,
        "num_train": int(train_l.shape[0]),
        "num_val": int(val_l.shape[0]),
    }


def describe_knn(p: KNNProtocol) -> str:
    """The settings in one line."""
    return (
        f"{p.crop} px crop of {p.resize}; {p.num_neighbors}-NN, T={p.temperature:g}, "
        f"weighted vote; pool {p.pool}"
    )


def summarize_knn(p: KNNProtocol, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: top-1 and top-5 (percent / 100, as the table prints percent)."""
    how = f"features: {results.get('pooling', '?')}"
    return [
        {"result": name, "miou": results[key] / 100.0, "std": None, "matching": how,
         "metric": "acc"}
        for name, key in (("top-1", "top1"), ("top-5", "top5"))
    ]  # fmt: skip
