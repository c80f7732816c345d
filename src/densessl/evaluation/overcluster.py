"""Overclustering evaluation of frozen patch features (Leopart; Ziegler & Asano, CVPR 2022).

Leopart (MkuuWaUjinga/leopart @7835701, experiments/overcluster/sup_overcluster.py and
``normalize_and_transform`` / ``cluster`` / ``PredsmIoU`` in experiments/utils.py):

1. Embed the evaluation split at 448 x 448 (aspect ignored, ImageNet normalisation), through
   the dataset's val loader: VOC drops the last incomplete batch (batch 60: 1440 of the 1449
   val images), COCO and ADE20K keep it. The protocol is **transductive**: clusters are fit on
   the very split that is scored.
2. Standardise the tokens (scikit-learn ``StandardScaler.partial_fit`` in chunks of 100,000
   rows, then ``transform`` in place), project them with ``faiss.PCAMatrix(D, 50)``.
3. ``faiss.Kmeans(50, K, niter=100, nredo=5, seed=s, gpu=False)`` and ``index.search(x, 1)``
   for each seed 0-4.
4. Upsample the cluster map to 100 x 100 (nearest); the GT goes to 448 with PIL nearest, then
   to 100 with torch nearest (``label_resize="leopart"``); drop pixels labelled 255.
5. Match clusters to classes: Hungarian when ``K == C``, greedy many-to-one by precision
   otherwise (``K = 500`` is the headline number on VOC); report mean (and std) over seeds.

The defaults (``backend="faiss"``, the settings of :class:`OverclusterProtocol`) run steps 2-3
with the same numerics (:mod:`densessl.ops.faiss_backend`: scikit-learn 1.0.1's
standardisation arithmetic re-implemented in numpy, faiss' own ``PCAMatrix`` with its
sub-sample of at most 1000 * D rows, faiss' own ``Kmeans``); on the same features they give
Leopart's per-seed mIoU and cluster assignments (pinned in tests/evaluate/test_overcluster.py
against Leopart's functions). ``drop_last=None`` follows the official loader of the dataset.

Remaining differences are named in every result (``"differences_from_official"``, see
:func:`densessl.evaluation.overcluster_parity.differences_from_official`): the image resize
(torch antialiased bilinear on floats; Leopart's PIL resize rounds to uint8); software versions
(faiss-cpu/OpenBLAS here; faiss 1.7.1/MKL, scikit-learn 1.0.1, numpy 1.21.2 in
Leopart's environment: same algorithms, possibly different float rounding; scikit-learn
releases that cast the statistics to float32 before ``transform`` differ from 1.0.1 by at most
2.4e-6 on the pinned test set, with the same assignments); COCO's unseeded val shuffle; ADE20K's
label set (Leopart: 111 part classes of street scenes); every setting changed from the official
one; and ``backend="torch"``.

``backend="torch"`` (the :meth:`OverclusterProtocol.for_scenes` CPU preset; no faiss needed)
is an approximation: torch k-means (:func:`densessl.ops.cluster.kmeans`, k-means++ by
default), PCA on every row in float64, two-pass standardisation. An independent check against
the official pipeline on a toy set measured k-means++ at +3.1 mIoU points, ``init="random"``
(k distinct training rows, not faiss' random stream) at -12.4, and projections that differ by
up to 0.60 once the rows exceed faiss' PCA cap of 1000 * D (agreeing to 4e-6 below it).
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

from densessl.errors import brief
from densessl.evaluation.checks import check_fields, check_int_list
from densessl.evaluation.embed import embed_dataset
from densessl.evaluation.miou import ConfusionMatrix
from densessl.evaluation.overcluster_parity import (
    dataset_kind,
    differences_from_official,
    scored_images,
)
from densessl.evaluation.preprocess import Extractor
from densessl.evaluation.preprocess_labels import LABEL_RESIZE
from densessl.ops.cluster import kmeans, prepare_features, resolve_backend

__all__ = [
    "OverclusterProtocol",
    "cluster_and_score",
    "evaluate_overclustering",
    "resolve_num_clusters",
    "score_clustering",
]

ClusterSpec = int | str
BACKENDS = ("faiss", "torch", "auto")


@dataclass
class OverclusterProtocol:
    """Settings of the overclustering evaluation (defaults: Leopart's official pipeline, K = C).

    Attributes:
        image_size: Images are resized to ``image_size x image_size`` (Leopart: 448).
        mask_size: Cluster maps and GT are compared at ``mask_size x mask_size`` (100).
        pca_dim: PCA output dimension (``None``: no PCA; 50).
        num_clusters: K values: ints, or strings ``"C"`` / ``"4C"`` meaning multiples of the
            dataset's number of classes.
        seeds: One k-means run (with ``n_init`` restarts) per seed (0-4).
        iters: Lloyd iterations (faiss ``niter``: 100).
        n_init: Restarts per run (faiss ``nredo``: 5), lowest objective kept.
        init: torch backend only: ``"k-means++"`` or ``"random"`` (k distinct training rows;
            *not* faiss' random stream, so it does not reproduce faiss). faiss always uses
            its own random initialisation.
        max_points_per_centroid: Train k-means on at most ``K * this`` tokens (faiss: 256).
        standardize: Standardise features before PCA.
        batch_size: Images per loader batch (Leopart's VOC configs: 60); with ``drop_last``
            the last ``N % batch_size`` images are not scored.
        drop_last: Drop the last incomplete batch as Leopart's val loader does. ``None``
            (default): as the official loader of the dataset (VOC: yes, 1440 of 1449 val
            images at batch 60; COCO, ADE20K and others: no); ``False`` scores every image.
        num_workers: DataLoader workers.
        backend: ``"faiss"`` (default; the official numerics, needs ``pip install
            'densessl[faiss]'``), ``"torch"`` (an approximation, see the module docstring)
            or ``"auto"`` (faiss when importable, else torch).
        chunk_size: Rows per distance block in torch k-means / PCA.
        many_to_one_criterion: ``"precision"`` (Leopart) or ``"iou"``.
        label_resize: ``"leopart"`` (PIL nearest to ``image_size``, then torch nearest to
            ``mask_size``, as ``sup_overcluster.py``) or ``"floor"`` (torch nearest straight
            to ``mask_size``); :mod:`densessl.evaluation.preprocess_labels`.
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
    batch_size: int = 60
    drop_last: bool | None = None
    num_workers: int = 0
    backend: str = "faiss"
    chunk_size: int = 65536
    many_to_one_criterion: str = "precision"
    label_resize: str = "leopart"

    def __post_init__(self) -> None:
        check_fields(
            self,
            ints={"image_size": 1, "mask_size": 1, "iters": 1, "n_init": 1, "batch_size": 1},
            optional_ints={"pca_dim": 1, "max_points_per_centroid": 1},
            bools=("standardize",),
            choices={
                "init": ("k-means++", "random"),
                "backend": BACKENDS,
                "many_to_one_criterion": ("precision", "iou"),
                "label_resize": LABEL_RESIZE,
            },
        )
        if self.drop_last is not None and not isinstance(self.drop_last, bool):
            raise ValueError(f"drop_last must be true, false or null, got {brief(self.drop_last)}")
        check_fields(self, ints={"num_workers": 0, "chunk_size": 1})
        check_int_list(self, "seeds", 0)
        try:
            if not resolve_num_clusters(self.num_clusters, 1):
                raise ValueError("give at least one K")
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"OverclusterProtocol.num_clusters must be ints >= 1 or 'C' / '4C' (multiples "
                f"of the number of classes), got {brief(self.num_clusters)}: {err}"
            ) from None

    @classmethod
    def for_voc(cls, **overrides) -> OverclusterProtocol:
        """Leopart's PVOC12 setting: K = 21, 300 and 500 at 448 px, scored at 100 px."""
        return replace(cls(num_clusters=("C", 300, 500)), **overrides)

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides) -> OverclusterProtocol:
        """Tiny CPU preset for the synthetic scenes: K = C and 4C, 3 seeds, native scoring,
        torch backend (the base install has no faiss)."""
        base = cls(
            image_size=image_size,
            mask_size=image_size,
            num_clusters=("C", "4C"),
            seeds=(0, 1, 2),
            batch_size=64,
            backend="torch",
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
                raise ValueError(f"cluster spec must be an int or like '4C', got {brief(item)}")
            k = int(text[:-1] or 1) * num_classes
        else:
            k = int(item)
        if k < 1:
            raise ValueError(f"number of clusters must be >= 1, got {brief(item)}")
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


def cluster_and_score(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    protocol: OverclusterProtocol | None = None,
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Steps 2-5 on embedded features: prepare, k-means per (K, seed), match and score.

    Args:
        feats: Patch features ``[N, h, w, D]`` (overwritten by the faiss backend's in-place
            standardisation when float32 on CPU).
        labels: GT ``[N, m, m]`` (int, ``ignore_index`` dropped).
        num_classes: ``C``.
        protocol: Settings (default :class:`OverclusterProtocol`).
        device: Device of the torch backend's k-means (faiss runs on CPU, as Leopart's).

    Returns:
        ``{"backend", "results": {"K=k": {"k", "matching", "per_seed", "miou_mean",
        "miou_std", "per_class_iou_mean"}}}``; ``miou_std`` is the population std over seeds.
    """
    protocol = protocol or OverclusterProtocol()
    if not protocol.seeds:
        raise ValueError("protocol.seeds is empty")
    backend = resolve_backend(protocol.backend)
    ks = resolve_num_clusters(protocol.num_clusters, num_classes)
    n, h, w, d = feats.shape
    _check_enough_tokens(ks, n, h, w, protocol.image_size)
    x = prepare_features(
        feats.reshape(n * h * w, d),
        standardize=protocol.standardize,
        pca_dim=protocol.pca_dim,
        backend=backend,
        chunk_size=protocol.chunk_size,
    )
    if backend == "torch":
        x = x.to(device)

    results: dict[str, dict] = {}
    runs = [(k, seed) for k in ks for seed in protocol.seeds]
    bar = tqdm(runs, desc="overcluster: k-means", disable=not progress, leave=False)
    for k, seed in bar:
        matching = "hungarian" if k == num_classes else "many_to_one"  # as Leopart
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
            backend=backend,  # type: ignore[arg-type]
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
    return {"backend": backend, "results": results}


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
        device: Device for the extractor (and the torch backend's k-means).
        progress: Show tqdm progress bars.

    Returns:
        ``{"protocol": asdict, "backend", "num_classes", "drop_last", "num_images" (scored),
        "num_images_total", "num_images_dropped", "grid": [h, w], "results": {"K=k": {"k",
        "matching", "miou_mean", "miou_std", "per_seed", "per_class_iou_mean"}},
        "differences_from_official": [str, ...]}``.
    """
    protocol = protocol or OverclusterProtocol()
    num_classes = int(dataset.num_classes)  # type: ignore[attr-defined]
    ignore_index = int(getattr(dataset, "ignore_index", 255))
    ks = resolve_num_clusters(protocol.num_clusters, num_classes)
    if not protocol.seeds:
        raise ValueError("protocol.seeds is empty")
    scored, counts = scored_images(dataset, protocol)
    patch = getattr(extractor, "patch_size", None)
    if isinstance(patch, int) and patch > 0:  # known grid: refuse before embedding anything
        side = protocol.image_size // patch
        _check_enough_tokens(ks, counts["num_images"], side, side, protocol.image_size)
    backend = resolve_backend(protocol.backend)  # a missing faiss fails before embedding

    feats, labels = embed_dataset(
        extractor,
        scored,
        protocol.image_size,
        protocol.mask_size,
        protocol.batch_size,
        protocol.num_workers,
        device,
        progress,
        desc="overcluster: embed",
        label_resize=protocol.label_resize,
    )
    h, w = feats.shape[1:3]
    out = cluster_and_score(
        feats, labels, num_classes, replace(protocol, backend=backend), ignore_index, device,
        progress,
    )  # fmt: skip
    del feats
    kind = dataset_kind(dataset)
    return {
        "protocol": asdict(protocol),
        "backend": backend,
        "num_classes": num_classes,
        **counts,
        "grid": [h, w],
        "results": out["results"],
        "differences_from_official": differences_from_official(protocol, backend, kind, counts),
    }
