"""Overclustering evaluation of frozen patch features (Leopart; Ziegler & Asano, CVPR 2022).

Leopart (MkuuWaUjinga/leopart @7835701, experiments/overcluster/sup_overcluster.py):

1. Embed the evaluation split at 448 x 448 (aspect ignored, ImageNet normalisation). The
   protocol is **transductive**: clusters are fit on the very split that is scored.
2. Standardise the tokens (``StandardScaler``), PCA to 50 dimensions.
3. k-means (100 iterations, 5 restarts) for each seed 0-4.
4. Upsample the cluster map to 100 x 100 (nearest); downsample the GT to 100 x 100
   (nearest); drop pixels labelled 255.
5. Match clusters to classes: Hungarian when ``K == C``, greedy many-to-one by precision
   when ``K > C`` (``K = 500`` is the headline number on VOC); report mean (and std) over
   seeds.

Differences, on purpose or by necessity:

* k-means runs in torch (:func:`densessl.ops.cluster.kmeans`) with k-means++
  initialisation by default; faiss uses random initialisation (``init="random"``
  reproduces it; ``backend="faiss"`` runs faiss itself when installed). Like faiss, training
  uses at most ``256 * K`` random tokens (``max_points_per_centroid``) and then assigns all.
* The GT is resized from its original size straight to ``mask_size``; Leopart first resized
  it to 448 (PIL nearest) and then to 100 (torch nearest).
* When ``K < C`` Hungarian matching is used (some classes stay unmatched).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.evaluation.miou import ConfusionMatrix
from densessl.evaluation.preprocess import (
    Extractor,
    ResizedSegmentation,
    eval_mode,
    extract_features,
    make_loader,
)
from densessl.ops.cluster import fit_pca, fit_standardizer, kmeans

__all__ = [
    "OverclusterProtocol",
    "embed_dataset",
    "evaluate_overclustering",
    "resolve_num_clusters",
    "score_clustering",
]

ClusterSpec = int | str


@dataclass
class OverclusterProtocol:
    """Settings of the overclustering evaluation (defaults: Leopart on VOC at ``K = C``).

    Attributes:
        image_size: Images are resized to ``image_size x image_size``.
        mask_size: Cluster maps and GT are compared at ``mask_size x mask_size``.
        pca_dim: PCA output dimension (``None``: no PCA).
        num_clusters: K values: ints, or strings ``"C"`` / ``"4C"`` meaning multiples of the
            dataset's number of classes.
        seeds: One k-means run (with ``n_init`` restarts) per seed.
        iters: Lloyd iterations.
        n_init: Restarts per run (faiss ``nredo``), best inertia kept.
        init: ``"k-means++"`` or ``"random"`` (faiss).
        max_points_per_centroid: Train k-means on at most ``K * this`` tokens (faiss: 256).
        standardize: Standardise features before PCA.
        batch_size: Images per extractor call.
        num_workers: DataLoader workers.
        backend: k-means backend (``"torch"``, ``"faiss"``, ``"auto"``).
        chunk_size: Rows per distance block in k-means / PCA.
        many_to_one_criterion: ``"precision"`` (Leopart) or ``"iou"``.
    """

    image_size: int = 448
    mask_size: int = 100
    pca_dim: int | None = 50
    num_clusters: ClusterSpec | Sequence[ClusterSpec] = ("C",)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    iters: int = 100
    n_init: int = 5
    init: str = "k-means++"
    max_points_per_centroid: int | None = 256
    standardize: bool = True
    batch_size: int = 32
    num_workers: int = 0
    backend: str = "torch"
    chunk_size: int = 65536
    many_to_one_criterion: str = "precision"

    @classmethod
    def for_voc(cls, **overrides) -> OverclusterProtocol:
        """Leopart's PVOC12 setting: K = 21, 300 and 500 at 448 px, scored at 100 px."""
        return replace(cls(num_clusters=("C", 300, 500)), **overrides)

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides) -> OverclusterProtocol:
        """Tiny CPU preset for the synthetic scenes: K = C and 4C, 3 seeds, native scoring."""
        base = cls(
            image_size=image_size,
            mask_size=image_size,
            num_clusters=("C", "4C"),
            seeds=(0, 1, 2),
            batch_size=64,
        )
        return replace(base, **overrides)


def resolve_num_clusters(spec: ClusterSpec | Sequence[ClusterSpec], num_classes: int) -> list[int]:
    """Turn ``num_clusters`` entries (``21``, ``"C"``, ``"4C"``) into distinct ints, in order."""
    items = [spec] if isinstance(spec, int | str) else list(spec)
    out: list[int] = []
    for item in items:
        if isinstance(item, str):
            text = item.strip().upper()
            if not text.endswith("C"):
                raise ValueError(f"cluster spec must be an int or like '4C', got {item!r}")
            k = int(text[:-1] or 1) * num_classes
        else:
            k = int(item)
        if k < 1:
            raise ValueError(f"number of clusters must be >= 1, got {item!r}")
        if k not in out:
            out.append(k)
    return out


def _check_enough_tokens(ks: list[int], images: int, h: int, w: int, image_size: int) -> None:
    tokens = images * h * w
    if max(ks) > tokens:
        from densessl.errors import ConfigError

        raise ConfigError(
            f"num_clusters: K={max(ks)} is more than the {tokens} patch tokens to cluster "
            f"({images} images x {h}x{w} tokens at image_size={image_size}); lower "
            "num_clusters, or evaluate more images (scenes: data.num_images) or a larger "
            "image_size"
        )


@torch.no_grad()
def embed_dataset(
    extractor: Extractor,
    dataset: Dataset,
    image_size: int,
    mask_size: int,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "embed",
) -> tuple[Tensor, Tensor]:
    """Patch features and resized labels of a whole labeled dataset.

    Returns:
        ``(features [N, h, w, D] float32 on CPU, labels [N, mask_size, mask_size] int64)``.
    """
    loader = make_loader(
        ResizedSegmentation(dataset, image_size, mask_size), batch_size, num_workers
    )
    feats, labels = [], []
    with eval_mode(extractor):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            feats.append(extract_features(extractor, batch["image"].to(device)).cpu())
            labels.append(batch["label"])
    if not feats:
        raise ValueError("the dataset is empty")
    return torch.cat(feats), torch.cat(labels)


def score_clustering(
    cluster_maps: Tensor,
    labels: Tensor,
    num_classes: int,
    num_clusters: int,
    matching: str,
    ignore_index: int = 255,
    criterion: str = "precision",
    chunk: int = 256,
) -> dict:
    """Upsample ``[N, h, w]`` cluster maps (nearest) to the labels' size and score them.

    Returns:
        :meth:`ConfusionMatrix.compute` output for the chosen matching.
    """
    cm = ConfusionMatrix(num_classes, num_clusters, ignore_index=ignore_index)
    size = tuple(labels.shape[-2:])
    for s in range(0, cluster_maps.shape[0], chunk):
        maps = cluster_maps[s : s + chunk].unsqueeze(1).float()
        maps = F.interpolate(maps, size=size, mode="nearest")[:, 0].long()
        cm.update(maps, labels[s : s + chunk].to(maps.device))
    return cm.compute(matching, criterion=criterion)  # type: ignore[arg-type]


def evaluate_overclustering(
    extractor: Extractor,
    dataset: Dataset,
    protocol: OverclusterProtocol | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Overclustering mIoU of an extractor's patch features on a labeled dataset.

    Args:
        extractor: ``images [B, 3, H, W] -> patches [B, h, w, D]`` (see package docstring).
        dataset: Labeled dataset with ``num_classes`` and ``ignore_index`` attributes; it is
            both clustered and scored (transductive).
        protocol: Settings (default :class:`OverclusterProtocol`).
        device: Device for the extractor and k-means.
        progress: Show tqdm progress bars.

    Returns:
        ``{"protocol": asdict, "num_classes", "num_images", "grid": [h, w], "results":
        {"K=k": {"k", "matching", "miou_mean", "miou_std", "per_seed",
        "per_class_iou_mean"}}}``; ``miou_std`` is the population std over seeds.
    """
    protocol = protocol or OverclusterProtocol()
    num_classes = int(dataset.num_classes)  # type: ignore[attr-defined]
    ignore_index = int(getattr(dataset, "ignore_index", 255))
    ks = resolve_num_clusters(protocol.num_clusters, num_classes)
    if not protocol.seeds:
        raise ValueError("protocol.seeds is empty")
    patch = getattr(extractor, "patch_size", None)
    if isinstance(patch, int) and patch > 0:  # known grid: refuse before embedding anything
        side = protocol.image_size // patch
        _check_enough_tokens(ks, len(dataset), side, side, protocol.image_size)  # type: ignore[arg-type]

    feats, labels = embed_dataset(
        extractor,
        dataset,
        protocol.image_size,
        protocol.mask_size,
        protocol.batch_size,
        protocol.num_workers,
        device,
        progress,
        desc="overcluster: embed",
    )
    n, h, w, d = feats.shape
    x = feats.reshape(n * h * w, d)
    del feats
    _check_enough_tokens(ks, n, h, w, protocol.image_size)
    if protocol.standardize:
        x = fit_standardizer(x, protocol.chunk_size).transform(x, protocol.chunk_size)
    if protocol.pca_dim is not None and protocol.pca_dim < d:
        x = fit_pca(x, protocol.pca_dim, protocol.chunk_size).transform(x, protocol.chunk_size)
    x = x.to(device)

    results: dict[str, dict] = {}
    runs = [(k, seed) for k in ks for seed in protocol.seeds]
    bar = tqdm(runs, desc="overcluster: k-means", disable=not progress, leave=False)
    for k, seed in bar:
        matching = "many_to_one" if k > num_classes else "hungarian"
        entry = results.setdefault(f"K={k}", {"k": k, "matching": matching, "per_seed": []})
        res = kmeans(
            x,
            k,
            iters=protocol.iters,
            seed=int(seed),
            n_init=protocol.n_init,
            init=protocol.init,  # type: ignore[arg-type]
            max_points_per_centroid=protocol.max_points_per_centroid,
            chunk_size=protocol.chunk_size,
            backend=protocol.backend,  # type: ignore[arg-type]
        )
        maps = res.assignments.reshape(n, h, w).cpu()
        scored = score_clustering(
            maps, labels, num_classes, k, matching, ignore_index, protocol.many_to_one_criterion
        )
        entry["per_seed"].append(scored["miou"])
        entry.setdefault("_per_class", []).append(scored["per_class_iou"])

    for entry in results.values():
        vals = entry["per_seed"]
        mean = sum(vals) / len(vals)
        entry["miou_mean"] = mean
        entry["miou_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        per_class = torch.tensor(entry.pop("_per_class"), dtype=torch.float64)
        entry["per_class_iou_mean"] = per_class.mean(dim=0).tolist()
    return {
        "protocol": asdict(protocol),
        "num_classes": num_classes,
        "num_images": n,
        "grid": [h, w],
        "results": results,
    }


def describe_overclustering(p: OverclusterProtocol) -> str:
    """The settings of an overclustering run in one line (printed beside every number)."""
    prep = ("standardise, " if p.standardize else "") + (
        f"PCA-{p.pca_dim}" if p.pca_dim is not None else "no PCA"
    )
    seeds = ",".join(str(s) for s in p.seeds)
    return (
        f"{p.image_size} px, scored at {p.mask_size} px; {prep}; k-means "
        f"({p.init}) {p.iters} it x{p.n_init} restarts; seeds {seeds}"
    )


def summarize_overclustering(
    p: OverclusterProtocol, results: dict[str, Any]
) -> list[dict[str, Any]]:
    """Headline rows of an overclustering result: one per K."""
    return [
        {
            "result": key,
            "miou": entry["miou_mean"],
            "std": entry["miou_std"],
            "matching": entry["matching"],
        }
        for key, entry in results["results"].items()
    ]
