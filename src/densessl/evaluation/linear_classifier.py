"""DINO's linear classifier on frozen image features (``densessl eval linear_cls``).

Official pipeline (facebookresearch/dino @7c446df5b9f45747937fb0d72314eb9f7b66930a,
eval_linear.py):

1. Features: the CLS tokens of the last ``n_last_blocks = 4`` blocks after the final norm,
   concatenated (ViT-S; ``avgpool_patchtokens`` adds the mean patch token, ViT-B uses 1 block
   + avgpool) (:func:`~densessl.evaluation.image_features.last_blocks_cls`).
2. ``nn.Linear(dim, classes)``, weights ``N(0, 0.01)``, bias 0; cross-entropy.
3. SGD, lr ``0.001 * batch / 256`` (linear scaling; batch 1024 = 8 GPUs x 128), momentum 0.9,
   no weight decay, cosine annealing to 0 over 100 epochs (stepped per epoch).
4. Train views: ``RandomResizedCrop(224)`` + horizontal flip; val: short side 256, central
   224. Top-1 / top-5 on val after every epoch; DINO reports the best top-1 over epochs
   (``best_top1``); ``top1`` here is the last epoch's.

Differences: densessl trains on the frozen features of each train image's central crop,
extracted once (no RandomResizedCrop / flip per epoch), so it is faster and somewhat lower
than the official numbers; no setting restores the augmented training yet. Backbones
without CLS use mean-pooled patch tokens (``pooling`` in the result).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from densessl.evaluation.checks import check_fields
from densessl.evaluation.image_bank import feature_bank
from densessl.evaluation.image_features import POOLS
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from densessl.ops.schedules import cosine

__all__ = ["LinearClassifierProtocol", "describe_linear_cls", "evaluate_linear_cls",
           "summarize_linear_cls"]  # fmt: skip


@dataclass
class LinearClassifierProtocol:
    """Settings of the linear classifier (defaults: DINO eval_linear.py, ViT-S/16).

    Attributes:
        epochs: training epochs (100).
        lr: base learning rate, scaled by ``batch_size / 256`` (0.001).
        batch_size: global batch (1024 = 8 x 128).
        momentum / weight_decay: SGD's (0.9 / 0).
        n_last_blocks: CLS tokens of this many last blocks are concatenated (4).
        avgpool_patchtokens: also concatenate the mean patch token of the last block.
        resize / crop: the val (and here train) view: short side, central crop.
        pool: ``auto`` / ``cls`` / ``mean`` (see :mod:`densessl.evaluation.image_features`).
        seed: initialisation and shuffling seed.
        mean / std: normalisation.
    """

    epochs: int = 100
    lr: float = 0.001
    batch_size: int = 1024
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_last_blocks: int = 4
    avgpool_patchtokens: bool = False
    resize: int = 256
    crop: int = 224
    pool: str = "auto"
    seed: int = 0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        check_fields(
            self,
            ints={"epochs": 1, "batch_size": 1, "n_last_blocks": 1, "resize": 1, "crop": 1,
                  "seed": 0},
            positive=("lr",),
            non_negative=("momentum", "weight_decay"),
            bools=("avgpool_patchtokens",),
            choices={"pool": POOLS},
        )  # fmt: skip
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must be <= resize ({self.resize})")

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> LinearClassifierProtocol:
        """CPU preset on the scenes: the whole scene, last block, 30 epochs of batch 64 (lr 0.4 x
        64 / 256 = 0.1)."""
        base = cls(epochs=30, batch_size=64, lr=0.4, n_last_blocks=1, resize=image_size,
                   crop=image_size)  # fmt: skip
        return replace(base, **overrides)


def _features(extractor: Any, data: Any, p: LinearClassifierProtocol, device: Any,
              progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, str]:  # fmt: skip
    kw = {"resize": p.resize, "crop": p.crop, "pool": p.pool, "device": device,
          "mean": p.mean, "std": p.std, "progress": progress, "desc": desc}  # fmt: skip
    feats, labels, _, pooled = feature_bank(extractor, data, n_last_blocks=p.n_last_blocks, **kw)
    if p.avgpool_patchtokens:
        mean, _, _, _ = feature_bank(extractor, data, pool="mean", **{**kw, "pool": "mean"})
        feats = torch.cat([feats, mean], dim=1)
    return feats, labels, pooled


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    order = logits.argsort(dim=1, descending=True)[:, :5]
    correct = order.eq(labels.view(-1, 1))
    n = max(1, labels.numel())
    return 100.0 * float(correct[:, :1].sum()) / n, 100.0 * float(correct.sum()) / n


def evaluate_linear_cls(
    extractor: Any,
    train: Any,
    val: Any,
    settings: LinearClassifierProtocol,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the linear layer on ``train``'s frozen features, score ``val`` every epoch.

    Returns:
        ``{"top1", "top5" (last epoch), "best_top1", "best_epoch", "pooling", "per_epoch",
        "per_item": [{"index", "label", "prediction"}], "feature_dim"}``.
    """
    p = settings
    x, y, pooling = _features(extractor, train, p, device, progress, "linear train")
    vx, vy, _ = _features(extractor, val, p, device, progress, "linear val")
    classes = int(val.num_classes)
    gen = torch.Generator().manual_seed(p.seed)
    head = nn.Linear(x.shape[1], classes).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    lr = p.lr * p.batch_size / 256.0
    opt = torch.optim.SGD(head.parameters(), lr, momentum=p.momentum, weight_decay=p.weight_decay)
    per_epoch, best = [], (-1.0, 0)
    for epoch in tqdm(range(p.epochs), desc="linear classifier", disable=not progress, leave=False):
        for group in opt.param_groups:  # CosineAnnealingLR(T_max=epochs, eta_min=0), per epoch
            group["lr"] = cosine(epoch, p.epochs, lr, 0.0)
        order = torch.randperm(len(y), generator=gen).to(y.device)
        for start in range(0, len(y), p.batch_size):
            idx = order[start : start + p.batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            top1, top5 = _accuracy(head(vx), vy)
        per_epoch.append({"epoch": epoch, "top1": top1, "top5": top5, "loss": float(loss.detach())})
        if top1 > best[0]:
            best = (top1, epoch)
    with torch.no_grad():
        pred = head(vx).argmax(dim=1)
    return {
        "top1": per_epoch[-1]["top1"], "top5": per_epoch[-1]["top5"],
        "best_top1": best[0], "best_epoch": best[1], "pooling": pooling,
        "feature_dim": int(x.shape[1]), "per_epoch": per_epoch,
        "per_item": [{"label": int(a), "prediction": int(b)}
                     for a, b in zip(vy, pred, strict=True)],
    }  # fmt: skip


def describe_linear_cls(p: LinearClassifierProtocol) -> str:
    """The settings in one line."""
    feats = f"CLS of last {p.n_last_blocks}" + (" + avgpool" if p.avgpool_patchtokens else "")
    return (
        f"{feats}; {p.epochs} ep SGD lr {p.lr:g}x{p.batch_size}/256 cosine; "
        f"{p.crop} px crop of {p.resize}, features cached (no aug)"
    )


def summarize_linear_cls(p: LinearClassifierProtocol, results: dict[str, Any]) -> list[dict]:
    """Rows: last-epoch top-1 / top-5 and DINO's reported best top-1."""
    how = f"features: {results.get('pooling', '?')}"
    best = f"best top-1 (epoch {results['best_epoch']}, as DINO)"
    rows = [("top-1", results["top1"]), ("top-5", results["top5"]), (best, results["best_top1"])]
    return [{"result": r, "miou": v / 100.0, "std": None, "matching": how, "metric": "acc"}
            for r, v in rows]  # fmt: skip
