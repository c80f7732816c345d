"""Heads of the linear / FCN probe (:mod:`densessl.evaluation.linear.probe`) and their training.

Both heads take patch features ``[B, D, h, w]`` and return class logits ``[B, C, *size]``.
:func:`fit_head` trains one on frozen features (SGD, step decay, paired crop/flip views);
the protocol settings and the scoring live in :mod:`densessl.evaluation.linear.probe`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.evaluation.preprocess import Extractor
from densessl.evaluation.preprocess_labels import (
    PairedViews,
    cache_view_features,
    draw_seeds,
    grid_features,
    paired_view,
    view_loader,
)

if TYPE_CHECKING:
    from densessl.evaluation.linear.probe import LinearProtocol

__all__ = ["HEADS", "BNLinearHead", "FCNHead", "LinearHead", "build_head", "fit_head", "sgd_step"]

#: Head names accepted by :func:`build_head` (``LinearProtocol.head``).
HEADS = ("linear", "fcn", "bn_linear")


class LinearHead(nn.Module):
    """1x1 conv on the patch grid; logits are upsampled (bilinear) to the requested size.

    Equal to Leopart's "upsample features, then 1x1 conv" (the two commute), but runs on
    ``C`` instead of ``D`` channels at the high resolution.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """``features [B, D, h, w]`` → logits ``[B, C, *size]``."""
        logits = self.conv(features)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class BNLinearHead(LinearHead):
    """DINOv2's ``BNHead``: BatchNorm over the (concatenated) features, then a 1x1 conv
    (facebookresearch/dinov2 @b8931f7, ``dinov2/eval/segmentation/models/decode_heads/
    linear_head.py``; SyncBN there, one-process BN here). Batch statistics in training,
    running statistics when scoring."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.bn = nn.BatchNorm2d(in_channels)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """``features [B, D, h, w]`` → logits ``[B, C, *size]``."""
        return super().forward(self.bn(features), size)


class FCNHead(nn.Module):
    """mmseg-style FCN head: 2 conv3x3 + ReLU, concat input, conv3x3 + ReLU, dropout, 1x1.

    No normalisation layers (Leopart builds it with ``norm_cfg=None``). Features are
    upsampled to ``feature_size`` first; the logits are upsampled to the requested size.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_size: int,
        channels: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.feature_size = feature_size

        def block(cin: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True))

        self.convs = nn.Sequential(block(in_channels), block(channels))
        self.conv_cat = block(in_channels + channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """``features [B, D, h, w]`` → logits ``[B, C, *size]``."""
        fs = (self.feature_size, self.feature_size)
        x = features
        if tuple(x.shape[-2:]) != fs:
            x = F.interpolate(x, size=fs, mode="bilinear", align_corners=False)
        out = self.conv_cat(torch.cat([x, self.convs(x)], dim=1))
        logits = self.conv_seg(self.dropout(out))
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def build_head(
    name: str,
    in_channels: int,
    num_classes: int,
    feature_size: int,
    fcn_channels: int = 512,
    fcn_dropout: float = 0.1,
) -> nn.Module:
    """A :class:`LinearHead` (``name="linear"``), :class:`FCNHead` (``name="fcn"``) or
    :class:`BNLinearHead` (``name="bn_linear"``).

    Raises:
        ValueError: Unknown ``name``.
    """
    if name == "fcn":
        return FCNHead(in_channels, num_classes, feature_size, fcn_channels, fcn_dropout)
    if name == "linear":
        return LinearHead(in_channels, num_classes)
    if name == "bn_linear":
        return BNLinearHead(in_channels, num_classes)
    raise ValueError(f"unknown head {name!r}; choose one of {HEADS}")


def fit_head(
    extractor: Extractor,
    dataset: Dataset,
    protocol: LinearProtocol,
    device: torch.device,
    num_classes: int,
    ignore: int,
    progress: bool,
) -> dict[str, Any]:
    """Train a fresh head on frozen features of ``dataset`` with SGD and step decay.

    With ``protocol.cache_views`` the features of a few views per image are cached once;
    otherwise every epoch draws fresh paired crops/flips and runs the extractor on them.

    Returns:
        ``{"head" (trained, train mode), "loss_history", "feature_dim", "grid",
        "seconds": {"features", "train"}}``.
    """
    gen = torch.Generator().manual_seed(protocol.seed)
    n = len(dataset)  # type: ignore[arg-type]
    size = (protocol.mask_size_train, protocol.mask_size_train)
    t0 = time.perf_counter()
    cache = None
    if protocol.cache_views:
        cache = cache_view_features(
            extractor, dataset, protocol.cache_views, protocol.image_size,
            protocol.mask_size_train, gen, protocol.crop_scale, protocol.crop_ratio,
            num_classes, ignore, protocol.eval_batch_size, protocol.num_workers, device,
            protocol.max_cache_gb, progress, protocol.label_resize,
        )  # fmt: skip
        dim, grid = cache[0].shape[2], list(cache[0].shape[3:])
    else:
        probe = paired_view(dataset[0], protocol.image_size, 1, torch.Generator(), None)[0]
        shape = grid_features(extractor, probe[None].to(device)).shape
        dim, grid = shape[1], list(shape[2:])
    t_features = time.perf_counter() - t0

    head = build_head(
        protocol.head,
        dim,
        num_classes,
        protocol.feature_size,
        protocol.fcn_channels,
        protocol.fcn_dropout,
    ).to(device)
    head.train()
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=protocol.lr,
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
    )
    criterion = nn.CrossEntropyLoss(ignore_index=ignore)
    history: list[float] = []
    bar = tqdm(range(protocol.epochs), desc="linear: train", disable=not progress, leave=False)
    for epoch in bar:
        for group in optimizer.param_groups:  # StepLR
            group["lr"] = protocol.lr * protocol.lr_gamma ** (epoch // protocol.lr_step_epoch)
        order = torch.randperm(n, generator=gen).tolist()
        total, count = 0.0, 0
        if cache is not None:
            feats, masks = cache
            picks = torch.randint(feats.shape[0], (n,), generator=gen)
            batches = [order[s : s + protocol.batch_size] for s in range(0, n, protocol.batch_size)]
            for idx in batches:
                t = torch.tensor(idx)
                f, y = feats[picks[t], t], masks[picks[t], t].long()
                if protocol.flip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    f[flip], y[flip] = f[flip].flip(-1), y[flip].flip(-1)
                loss = sgd_step(head, optimizer, criterion, f.to(device), y.to(device), size)
                if loss is not None:
                    total, count = total + loss * len(idx), count + len(idx)
        else:
            views = PairedViews(
                dataset, draw_seeds(n, gen), protocol.image_size, protocol.mask_size_train,
                protocol.crop_scale, protocol.crop_ratio, protocol.flip, num_classes, ignore,
                protocol.label_resize,
            )  # fmt: skip
            for batch in view_loader(views, order, protocol.batch_size, protocol.num_workers):
                f = grid_features(extractor, batch["image"].to(device))
                loss = sgd_step(head, optimizer, criterion, f, batch["label"].to(device), size)
                if loss is not None:
                    total, count = total + loss * len(f), count + len(f)
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    seconds = {"features": t_features, "train": time.perf_counter() - t0 - t_features}
    return {
        "head": head,
        "loss_history": history,
        "feature_dim": int(dim),
        "grid": [int(g) for g in grid],
        "seconds": seconds,
    }


def sgd_step(
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.CrossEntropyLoss,
    features: Tensor,
    labels: Tensor,
    size: tuple[int, int],
) -> float | None:
    """One SGD step; ``None`` (no update) when every pixel of the batch is ignored."""
    if not bool((labels != criterion.ignore_index).any()):
        return None  # the mean loss over zero pixels is undefined (nan)
    loss = criterion(head(features, size), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
