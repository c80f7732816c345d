"""Settings of the fully-unsupervised segmentation protocol and its foreground/background labels.

:class:`UnsupervisedProtocol` holds every setting of
:mod:`densessl.evaluation.unsupervised.pipeline` (defaults: Leopart on PVOC12, MkuuWaUjinga/leopart
@840e365 ``experiments/fully_unsup_seg/fully_unsup_seg.py``); :func:`background_classes` and
:func:`foreground_labels` turn a dataset's classes into the protocol's "background + one
class per foreground kind" labels (VOC: class 0 is background; synthetic scenes: the
stuff classes are background, the things are the foreground classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from densessl.errors import ConfigError, brief
from densessl.evaluation.unsupervised.community import COMMUNITY_METHODS

__all__ = ["UnsupervisedProtocol", "background_classes", "foreground_labels"]


def _grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(lo + i * step, 10) for i in range(round((hi - lo) / step) + 1))


@dataclass
class UnsupervisedProtocol:
    """Settings of CBFE + community detection (defaults: Leopart on PVOC12, ViT-S/16).

    Attributes:
        image_size: Images are resized to ``image_size x image_size`` (Leopart: 448).
        mask_size: Cluster maps, attention masks and GT are compared at this side (100).
        pca_dim: PCA dimension after standardising train + val features together (50).
        standardize: Standardise the features before PCA.
        background: GT classes that count as background (``None``: the dataset's own, see
            :func:`background_classes`).
        attention_backbone: Backbone (any ``--backbone`` form) whose last-block CLS attention
            gives the noisy foreground; ``None``: the evaluated backbone's own. Leopart uses
            DINO ViT-S/16's attention for every model.
        attention_mass: Share of the attention mass kept as foreground (0.65).
        attention_blur_sigma / attention_blur_kernel: Gaussian blur of the attention (0.6, 7).
        attention_remove_small: Remove mask components of at most 2 patches (Leopart).
        k_fg: Clusters of the spherical k-means of CBFE (200).
        bg_fraction: Range of the share of clusters that candidate cuts mark background.
        threshold_step: The chosen precision cut is rounded to multiples of this (0.05).
        community: ``"infomap"`` (the paper) or ``"leiden"``.
        k_community: Candidate numbers of foreground clusters merged by community detection.
        weight_threshold: Candidate edge thresholds of the co-occurrence graph.
        markov_time: Candidate Infomap Markov times.
        resolution: Candidate Leiden resolutions.
        num_communities: Infomap's preferred number of modules (``None``: the number of
            foreground classes, Leopart's 20 on VOC).
        cd_seeds: Community-detection seeds; mean and std over them are reported.
        cbfe_seeds: k-means seeds of the "CBFE only" result (foreground clustered into as
            many clusters as there are foreground classes); empty: skipped.
        seed: k-means seed of CBFE and of the foreground clustering (Leopart: 0).
        iters / n_init / init / max_points_per_centroid / backend / chunk_size: k-means
            settings (:func:`densessl.ops.cluster.kmeans`; faiss: 100 it, 5 restarts).
        fix_angle_typo: Co-occurrence angle 5π/4 instead of the official code's 4π/3.
        batch_size / num_workers: Embedding loader.

    The CBFE cut and the community-detection settings (``k_community`` x
    ``weight_threshold`` x ``markov_time``/``resolution``) are chosen with the **train
    split's labels**, as in the paper (Optuna there, a grid here); val is scored with them.
    Give single values to skip the search (Leopart's published ViT-S/16 choice:
    ``k_community=149 markov_time=2 weight_threshold=0.09``).
    """

    image_size: int = 448
    mask_size: int = 100
    pca_dim: int | None = 50
    standardize: bool = True
    background: Sequence[int] | None = None
    attention_backbone: str | None = None
    attention_mass: float = 0.65
    attention_blur_sigma: float = 0.6
    attention_blur_kernel: int = 7
    attention_remove_small: bool = True
    k_fg: int = 200
    bg_fraction: tuple[float, float] = (0.55, 0.75)
    threshold_step: float = 0.05
    community: str = "infomap"
    k_community: Sequence[int] = (99, 149, 199, 249)
    weight_threshold: Sequence[float] = _grid(0.01, 0.1, 0.01)
    markov_time: Sequence[float] = _grid(0.1, 2.0, 0.1)
    resolution: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
    num_communities: int | None = None
    cd_seeds: Sequence[int] = tuple(range(1, 11))
    cbfe_seeds: Sequence[int] = (0, 1, 2, 3, 4)
    seed: int = 0
    iters: int = 100
    n_init: int = 5
    init: str = "k-means++"
    max_points_per_centroid: int | None = 256
    backend: str = "torch"
    chunk_size: int = 65536
    fix_angle_typo: bool = False
    batch_size: int = 32
    num_workers: int = 0

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> UnsupervisedProtocol:
        """CPU preset for the synthetic scenes (8 thing classes + stuff as background).

        Labels are compared at half the image side, so that a patch of 8 px spans 4 label
        pixels, close to Leopart's 100 / 28 and what the distance-1/2 co-occurrence
        expects. K = 48 for CBFE, a small CD grid, 5 CD seeds, 3 CBFE-only seeds.
        """
        base = cls(
            image_size=image_size,
            mask_size=max(1, image_size // 2),
            k_fg=48,
            k_community=(24, 40),
            weight_threshold=(0.02, 0.05, 0.08),
            markov_time=(0.5, 1.0, 2.0),
            resolution=(0.5, 1.0, 2.0),
            cd_seeds=(1, 2, 3, 4, 5),
            cbfe_seeds=(0, 1, 2),
            n_init=2,
            iters=50,
            batch_size=64,
        )
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"UnsupervisedProtocol.{name} must be {what}, got {brief(value)}")

        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        def numbers(v: Any) -> bool:
            return all(isinstance(x, int | float) and math.isfinite(x) for x in v)

        for name in ("image_size", "mask_size", "k_fg", "iters", "n_init", "batch_size"):
            check(name, is_int(getattr(self, name), 1), "an integer >= 1")
        for name in ("seed", "num_workers"):
            check(name, is_int(getattr(self, name), 0), "an integer >= 0")
        check("chunk_size", is_int(self.chunk_size, 1), "an integer >= 1")
        check("pca_dim", self.pca_dim is None or is_int(self.pca_dim, 1), "null or >= 1")
        check("attention_mass", 0 < self.attention_mass <= 1, "in (0, 1]")
        check("attention_blur_sigma", self.attention_blur_sigma >= 0, ">= 0")
        odd = is_int(self.attention_blur_kernel, 1) and self.attention_blur_kernel % 2 == 1
        check("attention_blur_kernel", odd, "an odd integer")
        lo, hi = self.bg_fraction if len(self.bg_fraction) == 2 else (-1.0, -1.0)
        check("bg_fraction", 0 <= lo < hi <= 1, "a pair 0 <= lo < hi <= 1")
        check("threshold_step", 0 < self.threshold_step <= 1, "in (0, 1]")
        check("community", self.community in COMMUNITY_METHODS, f"one of {COMMUNITY_METHODS}")
        ks = self.k_community
        check("k_community", len(ks) > 0 and all(is_int(k, 1) for k in ks), "ints >= 1")
        for name in ("weight_threshold", "markov_time", "resolution"):
            values = getattr(self, name)
            ok = len(values) > 0 and numbers(values) and all(v > 0 for v in values)
            check(name, ok, "a non-empty list of numbers > 0")
        modules = self.num_communities
        check("num_communities", modules is None or is_int(modules, 1), "null or >= 1")
        seeds = self.cd_seeds
        ok = len(seeds) > 0 and all(is_int(s, 1) for s in seeds)
        check("cd_seeds", ok, "a non-empty list of integers >= 1 (Infomap rejects seed 0)")
        check("cbfe_seeds", all(is_int(s, 0) for s in self.cbfe_seeds), "integers >= 0")
        check("init", self.init in ("k-means++", "random"), "'k-means++' or 'random'")
        check("backend", self.backend in ("torch", "faiss", "auto"), "torch, faiss or auto")
        mppc = self.max_points_per_centroid
        check("max_points_per_centroid", mppc is None or is_int(mppc, 1), "null or >= 1")

    @property
    def scales(self) -> tuple[str, tuple[float, ...]]:
        """``("markov_time", values)`` for Infomap, ``("resolution", values)`` for Leiden."""
        if self.community == "infomap":
            return "markov_time", tuple(self.markov_time)
        return "resolution", tuple(self.resolution)


def background_classes(dataset: Any, override: Sequence[int] | None = None) -> list[int]:
    """GT classes that the protocol treats as background.

    In order: ``override``; the dataset's ``background_classes`` attribute; classes named
    ``stuff/...`` (synthetic scenes); a class named ``background`` (VOC's 0).

    Raises:
        ConfigError: none of these applies (e.g. COCO-Things, whose stuff is ignored), a
            class id out of range, or every class given as background.
    """
    names = [str(n) for n in getattr(dataset, "class_names", [])]
    num_classes = int(dataset.num_classes)
    if override is not None:
        chosen = [int(c) for c in override]
    elif getattr(dataset, "background_classes", None) is not None:
        chosen = [int(c) for c in dataset.background_classes]
    elif any(n.startswith("stuff/") for n in names):
        chosen = [i for i, n in enumerate(names) if n.startswith("stuff/")]
    elif any(n.lower() == "background" for n in names):
        chosen = [i for i, n in enumerate(names) if n.lower() == "background"]
    else:
        raise ConfigError(
            "the fully-unsupervised protocol scores foreground classes + background, and this "
            "dataset names no background class; give background=[ids]"
        )
    if not chosen or any(not 0 <= c < num_classes for c in chosen):
        raise ConfigError(f"background classes must be ids in [0, {num_classes}), got {chosen}")
    if len(set(chosen)) == num_classes:
        raise ConfigError("every class is background; nothing is left to segment")
    return sorted(set(chosen))


def foreground_labels(
    labels: Tensor, num_classes: int, background: Sequence[int], ignore_index: int = 255
) -> Tensor:
    """Map GT ids to 0 (background classes) and 1..F (the other classes, in order).

    ``ignore_index`` stays; any other id outside ``[0, num_classes)`` raises.
    """
    table = torch.full((max(num_classes, ignore_index + 1),), -1, dtype=torch.int64)
    fg = [c for c in range(num_classes) if c not in set(background)]
    table[list(background)] = 0
    table[fg] = torch.arange(1, len(fg) + 1)
    table[ignore_index] = ignore_index
    labels = labels.long()
    if bool(((labels < 0) | (labels >= table.numel())).any()):
        raise ValueError(f"labels outside [0, {num_classes}) and {ignore_index}")
    out = table.to(labels.device)[labels]
    if bool((out < 0).any()):
        raise ValueError(f"labels outside [0, {num_classes}) and {ignore_index}")
    return out


def _values(values: Any) -> str:
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return items[0] if len(items) == 1 else "{" + ",".join(items) + "}"


def describe_unsupervised(p: UnsupervisedProtocol) -> str:
    """The settings of a fully-unsupervised run in one line (printed beside every number)."""
    prep = ("standardise, " if p.standardize else "") + (
        f"PCA-{p.pca_dim}" if p.pca_dim is not None else "no PCA"
    )
    attention = p.attention_backbone or "own"
    scale_name, scales = p.scales
    return (
        f"{p.image_size} px, scored at {p.mask_size} px; {prep}; CBFE: spherical k-means "
        f"K={p.k_fg}, {attention} CLS attn {p.attention_mass:g} mass; CD: {p.community} over "
        f"k={_values(p.k_community)} wt={_values(p.weight_threshold)} "
        f"{scale_name}={_values(scales)}, {len(p.cd_seeds)} seeds; CBFE cut and CD settings "
        "chosen with train-split labels (as in the paper)"
    )


def summarize_unsupervised(
    p: UnsupervisedProtocol, results: dict[str, Any]
) -> list[dict[str, Any]]:
    """Headline rows: CBFE + community detection, and CBFE alone when it was scored."""
    cd = results["community"]
    rows = [
        {
            "result": f"CBFE+CD ({cd['method']})",
            "miou": cd["miou_mean"],
            "std": cd["miou_std"],
            "matching": "hungarian",
        }
    ]
    only = results.get("cbfe_only")
    if only is not None:
        rows.append(
            {
                "result": f"CBFE only (K={only['k']})",
                "miou": only["miou_mean"],
                "std": only["miou_std"],
                "matching": "hungarian",
            }
        )
    return rows
