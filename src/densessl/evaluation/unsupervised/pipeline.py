"""Fully-unsupervised semantic segmentation: CBFE + community detection (Leopart).

Leopart (Ziegler & Asano, CVPR 2022; MkuuWaUjinga/leopart @840e365,
``experiments/fully_unsup_seg/fully_unsup_seg.py``):

1. Embed train and val at 448 px; standardise the patch features of both splits together,
   PCA to 50 dimensions.
2. **CBFE** (:mod:`densessl.evaluation.unsupervised.cbfe`): spherical k-means (K = 200) on all
   tokens; each cluster's precision against the noisy CLS-attention foreground
   (:func:`densessl.ops.attention_foreground.attention_foreground`, 65 % of the mass); a
   precision cut chosen with the *train labels*; the clusters above it form each split's
   foreground.
3. **Foreground clustering**: the PCA features, nearest-upsampled to the label size (100),
   are clustered on foreground pixels only into ``k_community`` clusters; background pixels
   get id ``k_community``.
4. **Community detection** (:mod:`densessl.evaluation.unsupervised.community`): co-occurrence
   graph of the ``k_community + 1`` clusters over train + val, Infomap (10 seeds), clusters
   merged by community.
5. **Scoring**: Hungarian matching against background + the foreground classes (21 on VOC),
   mIoU at the label size, boundary ignored; mean and std over the community seeds. The
   "CBFE only" result clusters the foreground straight into as many clusters as there are
   foreground classes (5 seeds).

**Labels choose settings, as in the paper**: the CBFE cut and the community-detection
settings (``k_community``, ``weight_threshold``, ``markov_time``) are picked by train-split
mIoU (Optuna TPE over 300 trials in Leopart; a grid here). "Fully unsupervised" means no
labels at test time. A setting whose partitions Leopart's ``PredsmIoU(C, C)`` would refuse
(more than C ids with pixels, or an id above C) is dropped from the search unless nothing
else is left; as there, only ids 0 .. C-1 are matched, so with C communities (1-based ids)
the last one counts as background
(:func:`~densessl.evaluation.unsupervised.community_search.partition_is_valid`).

Differences: k-means in torch (:mod:`densessl.ops.cluster`, k-means++ by default);
the foreground clustering runs on token features weighted by the label pixels each token
covers (exactly the upsampled pixel set; at most ``256 K`` pixels sampled for training, as
faiss does); community seeds start at 1 (Infomap 2.16); ignored pixels are left out of the
CBFE foreground IoU; Leiden is offered besides Infomap. The noisy foreground comes from the
evaluated backbone's own attention unless ``attention_backbone`` names another one (Leopart
used DINO ViT-S/16's attention for every model it evaluated).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from densessl.errors import ConfigError
from densessl.evaluation.preprocess import Extractor, extractor_device
from densessl.evaluation.unsupervised.attention import attention_model, embed_with_attention
from densessl.evaluation.unsupervised.cbfe import (
    choose_threshold,
    cluster_foreground_counts,
    cluster_precisions,
    foreground_clusters,
    foreground_iou,
)
from densessl.evaluation.unsupervised.community_search import (
    confusion_of_maps,
    mean_std,
    pixel_weights,
    score_partition,
    search_communities,
    upsample_maps,
)
from densessl.evaluation.unsupervised.settings import (
    UnsupervisedProtocol,
    background_classes,
    foreground_labels,
)
from densessl.ops.attention_foreground import attention_foreground
from densessl.ops.cluster import assign, fit_pca, fit_standardizer, kmeans

__all__ = [
    "SplitData",
    "UnsupervisedProtocol",
    "evaluate_unsupervised",
    "segment_unsupervised",
]


class SplitData(NamedTuple):
    """One split's inputs to :func:`segment_unsupervised`."""

    features: Tensor  # [N, h, w, D] patch features
    foreground: Tensor  # [N, ha, wa] bool noisy (attention) foreground, any grid
    labels: Tensor  # [N, m, m] int64: 0 background, 1..F foreground classes, 255 ignore


def _kmeans(x: Tensor, k: int, p: UnsupervisedProtocol, seed: int, **kw: Any) -> Any:
    return kmeans(
        x,
        k,
        iters=p.iters,
        seed=seed,
        n_init=p.n_init,
        init=p.init,  # type: ignore[arg-type]
        chunk_size=p.chunk_size,
        backend=p.backend,  # type: ignore[arg-type]
        **kw,
    )


def _pixel_kmeans(x: Tensor, weights: Tensor, k: int, p: UnsupervisedProtocol, seed: int) -> Tensor:
    """k-means of the pixel set where token ``i`` appears ``weights[i]`` times → token labels.

    Like faiss, training uses at most ``k * max_points_per_centroid`` pixels, drawn without
    replacement; every token is then assigned to its nearest centroid.
    """
    total = int(weights.sum())
    if k > total:
        raise ValueError(f"{k} clusters for {total} foreground pixels; lower k_community")
    budget = None if p.max_points_per_centroid is None else k * p.max_points_per_centroid
    w = weights.to(x.device)
    if budget is None or total <= budget:
        train = x.repeat_interleave(w, dim=0)
    else:
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(total, generator=gen)[:budget].to(x.device)
        train = x[torch.searchsorted(torch.cumsum(w, 0), pick, right=True)]
    res = _kmeans(train, k, p, seed, max_points_per_centroid=None)
    return assign(x, res.centroids.to(x.device), p.chunk_size)[0]


def _project(x: Tensor, p: UnsupervisedProtocol) -> Tensor:
    if p.standardize:
        x = fit_standardizer(x, p.chunk_size).transform(x, p.chunk_size)
    if p.pca_dim is not None and p.pca_dim < x.shape[1]:
        x = fit_pca(x, p.pca_dim, p.chunk_size).transform(x, p.chunk_size)
    return x


def _cbfe(
    tokens: Tensor, n_train: int, train: SplitData, val: SplitData, p: UnsupervisedProtocol
) -> tuple[Tensor, dict[str, Any]]:
    """Precisions, the train-chosen cut and each split's foreground clusters."""
    size = (train.labels.shape[-2], train.labels.shape[-1])
    splits = {"train": (tokens[:n_train], train), "val": (tokens[n_train:], val)}
    precisions, counts, attention_iou = {}, {}, {}
    for name, (maps, data) in splits.items():
        up, noisy = upsample_maps(maps, size), upsample_maps(data.foreground, size)
        precisions[name] = cluster_precisions(up, noisy, p.k_fg)
        counts[name] = cluster_foreground_counts(up, data.labels, p.k_fg)
        noisy_counts = cluster_foreground_counts(noisy.long(), data.labels, 2)
        attention_iou[name] = float(foreground_iou(noisy_counts, torch.tensor([False, True])))
    choice = choose_threshold(precisions["train"], counts["train"], p.bg_fraction, p.threshold_step)
    chosen = {s: foreground_clusters(precisions[s], choice["threshold"]) for s in splits}
    fg_tokens = torch.cat([chosen[s][splits[s][0]] for s in ("train", "val")])
    report = {
        "k": p.k_fg,
        "threshold": choice["threshold"],
        "chosen_with": "train-split labels",
        "best_precision": choice["best_precision"],
        "best_num_background": choice["best_num_background"],
        "num_fg_clusters": {s: int(chosen[s].sum()) for s in splits},
        "fg_iou": {s: float(foreground_iou(counts[s], chosen[s])) for s in splits},
        "attention_fg_iou": attention_iou,
        "fg_token_share": float(fg_tokens.float().mean()),
        "candidates": choice["candidates"],
    }
    return fg_tokens, report


def segment_unsupervised(
    train: SplitData,
    val: SplitData,
    protocol: UnsupervisedProtocol,
    num_classes: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """CBFE + community detection on precomputed features (see the module docstring).

    Args:
        train / val: :class:`SplitData`; labels already in protocol form (0 background,
            ``1..num_classes-1`` foreground, 255 ignore), of one size for both splits.
        protocol: Settings.
        num_classes: Background + foreground classes (21 on VOC).
        device: Where k-means runs.
        progress: tqdm over the community-detection search.

    Returns:
        ``{"miou", "cbfe", "cbfe_only", "community"}`` (see :func:`evaluate_unsupervised`).
    """
    p = protocol
    n_train, n = train.features.shape[0], train.features.shape[0] + val.features.shape[0]
    _, h, w, d = train.features.shape
    size = (train.labels.shape[-2], train.labels.shape[-1])
    x = _project(torch.cat([train.features, val.features]).reshape(-1, d).float(), p)
    x = x.to(device)
    if p.k_fg > x.shape[0]:
        raise ValueError(f"k_fg={p.k_fg} exceeds the number of tokens ({x.shape[0]})")

    mppc = p.max_points_per_centroid
    sph = _kmeans(x, p.k_fg, p, p.seed, spherical=True, max_points_per_centroid=mppc)
    fg_tokens, cbfe = _cbfe(sph.assignments.reshape(n, h, w).cpu(), n_train, train, val, p)

    flat_fg = fg_tokens.reshape(-1)
    x_fg = x[flat_fg.to(x.device)]
    weights = pixel_weights(h, w, size).reshape(-1).repeat(n)[flat_fg]

    def cluster_foreground(k: int, seed: int) -> Tensor:
        maps = torch.full((n * h * w,), k, dtype=torch.int64)
        maps[flat_fg] = _pixel_kmeans(x_fg, weights, k, p, seed).cpu()
        return maps.reshape(n, h, w)

    cbfe_only = None
    if p.cbfe_seeds:
        k = num_classes - 1
        scores = []
        for seed in p.cbfe_seeds:
            maps = cluster_foreground(k, int(seed))[n_train:]
            conf = confusion_of_maps(maps, val.labels, k + 1, num_classes)
            scores.append(score_partition(conf, torch.arange(k + 1)))
        mean, std = mean_std([s[0] for s in scores])
        cbfe_only = {
            "k": k,
            "matching": "hungarian",
            "miou_mean": mean,
            "miou_std": std,
            "per_seed": [s[0] for s in scores],
            "per_class_iou_mean": torch.tensor([s[1] for s in scores]).mean(0).tolist(),
        }
    community = search_communities(
        cluster_foreground, n_train, train.labels, val.labels, p, num_classes, progress
    )
    return {
        "miou": community["miou_mean"],
        "cbfe": cbfe,
        "cbfe_only": cbfe_only,
        "community": community,
    }


def evaluate_unsupervised(
    extractor: Extractor,
    train: Dataset,
    val: Dataset,
    protocol: UnsupervisedProtocol | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Fully-unsupervised segmentation mIoU of an extractor (module docstring).

    Args:
        extractor: ``images -> patches [B, h, w, D]``; its CLS attention gives the noisy
            foreground unless ``protocol.attention_backbone`` names another backbone.
        train: Labeled split that chooses the CBFE cut and the CD settings (VOC ``train``).
        val: Labeled split that is scored (VOC ``val``). Both are clustered (transductive).
        protocol: Settings (default :class:`UnsupervisedProtocol`, Leopart on VOC).
        device: Device of the extractor and of k-means.
        progress: tqdm progress bars.

    Returns:
        ``{"protocol", "miou", "num_classes", "class_names", "background_classes",
        "attention", "grid", "num_train", "num_val", "cbfe": {threshold, fg IoUs, ...},
        "cbfe_only": {miou_mean, miou_std, ...} or None, "community": {chosen settings,
        train_miou, miou_mean, miou_std, per_seed, search, ...}, "note"}``.
    """
    p = protocol or UnsupervisedProtocol()
    ignore = int(getattr(val, "ignore_index", 255))
    background = background_classes(val, p.background)
    num_source = int(val.num_classes)  # type: ignore[attr-defined]
    names = list(getattr(val, "class_names", [str(i) for i in range(num_source)]))
    fg_names = [n for i, n in enumerate(names) if i not in background]
    other = None
    described = "the evaluated backbone's own CLS attention"
    if p.attention_backbone is not None:
        from densessl.evaluation.features import build_extractor

        wrapper = build_extractor(p.attention_backbone).to(extractor_device(extractor))
        found = attention_model(wrapper)
        if found is None:
            raise ConfigError(f"attention_backbone {p.attention_backbone!r} has no CLS attention")
        other, described = found[0], f"CLS attention of {p.attention_backbone}"
    data = {}
    for split, dataset in (("train", train), ("val", val)):
        feats, attn, labels = embed_with_attention(
            extractor,
            dataset,
            p.image_size,
            p.mask_size,
            other,
            p.batch_size,
            p.num_workers,
            device,
            progress,
            desc=f"unsupervised: embed {split}",
        )
        fg = attention_foreground(
            attn.reshape(attn.shape[0], 1, -1),
            (attn.shape[1], attn.shape[2]),
            mass=p.attention_mass,
            blur_sigma=p.attention_blur_sigma,
            blur_kernel=p.attention_blur_kernel,
            remove_small=p.attention_remove_small,
        )
        if ignore != 255:
            labels = torch.where(labels == ignore, torch.full_like(labels, 255), labels)
        data[split] = SplitData(feats, fg, foreground_labels(labels, num_source, background))
    num_classes = len(fg_names) + 1
    result = segment_unsupervised(data["train"], data["val"], p, num_classes, device, progress)
    chosen = ", ".join(f"{k}={v:g}" for k, v in result["community"]["chosen"].items())
    cbfe = result["cbfe"]
    note = (
        f"as in the paper, train-split labels chose the CBFE precision cut "
        f"({cbfe['threshold']:.2f}) and the community-detection settings ({chosen}); no "
        f"labels are used on val. CBFE foreground IoU on val {100 * cbfe['fg_iou']['val']:.1f} "
        f"(attention mask alone {100 * cbfe['attention_fg_iou']['val']:.1f})"
    )
    return {
        "protocol": asdict(p),
        **result,
        "num_classes": num_classes,
        "class_names": ["background", *fg_names],
        "background_classes": [names[i] for i in background],
        "attention": described,
        "grid": list(data["val"].features.shape[1:3]),
        "num_train": len(data["train"].features),
        "num_val": len(data["val"].features),
        "note": note,
    }
