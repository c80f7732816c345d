"""Seeded k-means, standardisation and PCA in torch (faiss optional).

Leopart's overclustering (experiments/utils.py ``normalize_and_transform`` and ``cluster``)
standardises the patch features (sklearn ``StandardScaler``), projects them to 50 dimensions
(faiss ``PCAMatrix``) and runs faiss k-means (``niter=100``, ``nredo=5``). The official
numerics live in :mod:`densessl.ops.faiss_backend` (``kmeans(backend="faiss")`` calls faiss
itself). This module is the plain-torch **approximation** that works without faiss and is
reproducible for a seed on every device: k-means++ or random initialisation from a torch
generator (not faiss' random stream, so neither reproduces faiss' clusters), PCA fitted on
every row in float64 (faiss samples at most ``1000 * D`` rows and works in float32), a
two-pass float64 standardisation (sklearn updates chunk by chunk).

Everything follows the device of its inputs. Random numbers are drawn from a CPU
``torch.Generator``, so the sub-sample and the initialisation are the same on every device;
float rounding (and CUDA's atomic ``index_add_``) can still make CPU and GPU runs end in
different local optima on data without clear cluster structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from densessl.ops.faiss_backend import (
    faiss_available,
    faiss_kmeans,
    faiss_pca,
    require_faiss,
    standardize_inplace,
)

__all__ = [
    "PCA",
    "KMeansResult",
    "Standardizer",
    "assign",
    "faiss_available",
    "fit_pca",
    "fit_standardizer",
    "kmeans",
    "pca",
    "prepare_features",
    "resolve_backend",
    "standardize",
]


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans` (unpacks as ``centroids, assignments, inertia``)."""

    centroids: Tensor  # [k, D]
    assignments: Tensor  # [N] int64, nearest centroid of every input point
    inertia: float  # sum of squared distances of all points to their centroid


def assign(x: Tensor, centroids: Tensor, chunk_size: int = 65536) -> tuple[Tensor, Tensor]:
    """Nearest centroid (squared Euclidean) of every row of ``x``, in chunks of rows.

    Returns:
        ``(assignments [N] int64, squared distances [N])``.
    """
    c_sq = (centroids * centroids).sum(dim=1)
    idx, dist = [], []
    for start in range(0, x.shape[0], chunk_size):
        xc = x[start : start + chunk_size]
        d = (xc * xc).sum(dim=1, keepdim=True) - 2.0 * (xc @ centroids.T) + c_sq
        best, arg = d.min(dim=1)
        idx.append(arg)
        dist.append(best.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def _rand(gen: torch.Generator, n: int, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64).to(device)


def _init_centroids(
    x: Tensor, k: int, init: str | Tensor, gen: torch.Generator, chunk_size: int
) -> Tensor:
    n = x.shape[0]
    if isinstance(init, Tensor):
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"init centroids must be [{k}, {x.shape[1]}], got {tuple(init.shape)}")
        return init.to(device=x.device, dtype=x.dtype).clone()
    if init == "random":
        return x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    if init != "k-means++":
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    d2 = assign(x, centroids[:1], chunk_size)[1].to(torch.float64)
    for j in range(1, k):
        cum = torch.cumsum(d2, 0)
        total = cum[-1]
        if total <= 0:  # fewer distinct points than k: fall back to a random point
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            target = _rand(gen, 1, x.device) * total
            pick = int(torch.searchsorted(cum, target).clamp_max(n - 1))
        centroids[j] = x[pick]
        d2 = torch.minimum(d2, assign(x, centroids[j : j + 1], chunk_size)[1].to(torch.float64))
    return centroids


def _lloyd(
    x: Tensor, centroids: Tensor, iters: int, spherical: bool, chunk_size: int
) -> tuple[Tensor, float]:
    k = centroids.shape[0]
    previous = None
    for _ in range(iters):
        labels, dist = assign(x, centroids, chunk_size)
        if previous is not None and torch.equal(labels, previous):
            break
        previous = labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            # Deterministic re-seeding: empty clusters take the points farthest from their
            # current centroid (distinct points, largest distance first).
            far = torch.topk(dist, min(empty.numel(), x.shape[0])).indices
            centroids[empty[: far.numel()]] = x[far]
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
    labels = assign(x, centroids, chunk_size)[0]
    return centroids, _inertia(x, centroids, labels, chunk_size)


def _inertia(x: Tensor, centroids: Tensor, labels: Tensor, chunk_size: int) -> float:
    """Sum of squared distances, computed directly (no ``|x|^2 - 2xc + |c|^2`` cancellation)."""
    total = 0.0
    for s in range(0, x.shape[0], chunk_size):
        diff = x[s : s + chunk_size] - centroids[labels[s : s + chunk_size]]
        total += float((diff.double() ** 2).sum())
    return total


def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 100,
    seed: int = 0,
    n_init: int = 1,
    init: Literal["k-means++", "random"] | Tensor = "k-means++",
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    chunk_size: int = 65536,
    backend: Literal["torch", "faiss", "auto"] = "torch",
) -> KMeansResult:
    """Lloyd's k-means with restarts.

    Args:
        x: ``[N, D]`` float points (any device).
        k: Number of clusters (``<= N``).
        iters: Maximum Lloyd iterations per restart (stops early when assignments no longer
            change).
        seed: Seed of the CPU generator used for sub-sampling and initialisation.
        n_init: Restarts (faiss ``nredo``); the one with the lowest training inertia wins.
        init: ``"k-means++"``, ``"random"`` (k distinct training points drawn from the torch
            generator; faiss also starts from random points, but from its own random stream,
            so this does not reproduce faiss' clusters) or a ``[k, D]`` tensor of initial
            centroids.
        spherical: Re-normalise centroids to unit norm after each update (faiss
            ``spherical=True``); points are not normalised.
        max_points_per_centroid: Train on a random subset of ``k * max_points_per_centroid``
            points when ``N`` is larger (faiss' default is 256); all points are assigned at
            the end. ``None`` trains on everything.
        chunk_size: Rows per distance block (memory is ``chunk_size * k`` floats).
        backend: ``"torch"`` (default, deterministic for a seed on every machine),
            ``"faiss"`` (``faiss.Kmeans`` + ``index.search`` via
            :func:`densessl.ops.faiss_backend.faiss_kmeans`, CPU; ``init`` and
            ``chunk_size`` are ignored; a missing faiss raises
            :class:`~densessl.ops.faiss_backend.MissingFaissError`) or ``"auto"`` (faiss if
            importable, else torch).

    Returns:
        :class:`KMeansResult` with centroids ``[k, D]`` (dtype of ``x`` or float32),
        assignments ``[N]`` and the inertia over all ``N`` points.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={n}")
    if n_init < 1 or iters < 0:
        raise ValueError("n_init must be >= 1 and iters >= 0")
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        data = x.detach().float().cpu().numpy()
        c, a, inertia = faiss_kmeans(
            data, k, iters, seed, n_init, spherical, max_points_per_centroid
        )
        return KMeansResult(
            torch.from_numpy(c).to(x.device), torch.from_numpy(a).to(x.device), inertia
        )
    if backend != "torch":
        raise ValueError(f"backend must be 'torch', 'faiss' or 'auto', got {backend!r}")

    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    gen = torch.Generator().manual_seed(seed)
    train = x
    if max_points_per_centroid is not None and n > k * max_points_per_centroid:
        train = x[torch.randperm(n, generator=gen)[: k * max_points_per_centroid].to(x.device)]
    best: tuple[Tensor, float] | None = None
    for _ in range(n_init):
        centroids = _init_centroids(train, k, init, gen, chunk_size)
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
        centroids, objective = _lloyd(train, centroids, iters, spherical, chunk_size)
        if best is None or objective < best[1]:
            best = (centroids, objective)
    assert best is not None
    labels = assign(x, best[0], chunk_size)[0]
    return KMeansResult(best[0], labels, _inertia(x, best[0], labels, chunk_size))


# --------------------------------------------------------------------------- standardise / PCA


@dataclass
class Standardizer:
    """Per-dimension ``(x - mean) / scale`` (sklearn ``StandardScaler`` semantics)."""

    mean: Tensor  # [D] float64
    scale: Tensor  # [D] float64, population std (ddof=0); 1 where the std is 0

    def transform(self, x: Tensor, chunk_size: int = 65536) -> Tensor:
        """Standardise ``x`` ``[N, D]`` (float32 result, chunked)."""
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        mean = self.mean.to(x.device)
        scale = self.scale.to(x.device)
        for s in range(0, x.shape[0], chunk_size):
            out[s : s + chunk_size] = ((x[s : s + chunk_size].double() - mean) / scale).float()
        return out


def _mean(x: Tensor, chunk_size: int) -> Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        total += x[s : s + chunk_size].double().sum(dim=0)
    return total / x.shape[0]


def fit_standardizer(x: Tensor, chunk_size: int = 65536) -> Standardizer:
    """Fit per-dimension mean and population std of ``x`` ``[N, D]`` in float64 (two passes)."""
    mean = _mean(x, chunk_size)
    var = torch.zeros_like(mean)
    for s in range(0, x.shape[0], chunk_size):
        var += ((x[s : s + chunk_size].double() - mean) ** 2).sum(dim=0)
    std = (var / x.shape[0]).sqrt()
    return Standardizer(mean, torch.where(std > 0, std, torch.ones_like(std)))


def standardize(x: Tensor, chunk_size: int = 65536) -> Tensor:
    """Standardise the columns of ``x`` with its own statistics (fit + transform)."""
    return fit_standardizer(x, chunk_size).transform(x, chunk_size)


@dataclass
class PCA:
    """A fitted principal-component projection."""

    mean: Tensor  # [D] float64
    components: Tensor  # [dim, D] float64, rows are unit principal axes, largest first
    explained_variance: Tensor  # [dim] float64

    def transform(self, x: Tensor, chunk_size: int = 65536) -> Tensor:
        """Project ``x`` ``[N, D]`` to ``[N, dim]`` (float32, chunked)."""
        mean = self.mean.to(x.device)
        comp = self.components.to(x.device)
        out = torch.empty(x.shape[0], comp.shape[0], dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], chunk_size):
            out[s : s + chunk_size] = ((x[s : s + chunk_size].double() - mean) @ comp.T).float()
        return out


def fit_pca(x: Tensor, dim: int = 50, chunk_size: int = 65536) -> PCA:
    """Fit PCA on ``x`` ``[N, D]``.

    The covariance of the centred data is accumulated in float64 by chunks and
    eigen-decomposed (``torch.linalg.eigh``), which equals the SVD of the centred data but
    keeps memory at ``D x D`` (faiss ``PCAMatrix`` also uses the covariance, but in float32
    and on a sample of at most ``1000 * D`` rows, so the two differ above that many rows).
    Each axis is signed so that its largest-magnitude entry is positive, which makes the
    projection deterministic.

    Args:
        x: Data ``[N, D]``.
        dim: Output dimension, clipped to ``D``.
        chunk_size: Rows per accumulation block.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got {tuple(x.shape)}")
    n, d = x.shape
    dim = min(dim, d)
    mean = _mean(x, chunk_size)
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for s in range(0, n, chunk_size):
        xc = x[s : s + chunk_size].double() - mean
        cov += xc.T @ xc
    cov /= max(n - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:dim]
    comp = evecs[:, order].T.contiguous()
    flip = comp.gather(1, comp.abs().argmax(dim=1, keepdim=True)).sign()
    comp = comp * torch.where(flip == 0, torch.ones_like(flip), flip)
    return PCA(mean, comp, evals[order].clamp_min(0))


def pca(x: Tensor, dim: int = 50, chunk_size: int = 65536) -> Tensor:
    """Project ``x`` onto its first ``dim`` principal components (fit + transform)."""
    return fit_pca(x, dim, chunk_size).transform(x, chunk_size)


def resolve_backend(backend: str) -> str:
    """``"auto"``: faiss when importable, else torch; ``"faiss"`` without faiss: error."""
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        require_faiss("backend=faiss (the default of the official settings)")
    elif backend != "torch":
        raise ValueError(f"backend must be 'faiss', 'torch' or 'auto', got {backend!r}")
    return backend


def prepare_features(
    x: Tensor,
    *,
    standardize: bool = True,
    pca_dim: int | None = 50,
    backend: str = "faiss",
    chunk_size: int = 65536,
) -> Tensor:
    """Standardise and PCA-project ``x`` ``[N, D]`` the way ``backend`` does.

    ``"faiss"`` (Leopart's ``normalize_and_transform``):
    :func:`~densessl.ops.faiss_backend.standardize_inplace`, which overwrites ``x`` when it
    is a contiguous float32 CPU tensor (as Leopart overwrites its features), then
    :func:`~densessl.ops.faiss_backend.faiss_pca`; float32 CPU out. ``"torch"`` (an
    approximation): :func:`fit_standardizer` and :func:`fit_pca` on every row in float64, on
    the device of ``x``. PCA is skipped when ``pca_dim`` is None
    or not below ``D``.
    """
    use_pca = pca_dim is not None and pca_dim < x.shape[1]
    if backend == "faiss":
        arr = x.detach().cpu().float().contiguous().numpy()
        if standardize:
            standardize_inplace(arr)
        if use_pca:
            arr = faiss_pca(arr, int(pca_dim))  # type: ignore[arg-type]
        return torch.from_numpy(arr)
    if backend != "torch":
        raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    if standardize:
        x = fit_standardizer(x, chunk_size).transform(x, chunk_size)
    if use_pca:
        x = fit_pca(x, int(pca_dim), chunk_size).transform(x, chunk_size)  # type: ignore[arg-type]
    return x
