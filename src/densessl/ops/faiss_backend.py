"""Leopart's overclustering numerics: sklearn-style chunked standardisation, faiss PCA and k-means.

Leopart (MkuuWaUjinga/leopart @7835701, ``experiments/utils.py``) prepares and clusters the
patch features with::

    scaler = StandardScaler()                           # scikit-learn 1.0.1 in environment.yml
    for chunk in 100,000-row chunks: scaler.partial_fit(chunk)
    for chunk in 100,000-row chunks: feats[chunk] = scaler.transform(feats[chunk])
    pca = faiss.PCAMatrix(d, 50); pca.train(feats); x = pca.apply_py(feats)
    km = faiss.Kmeans(50, k, niter=100, nredo=5, seed=seed, gpu=False); km.train(x)
    _, labels = km.index.search(x, 1)

:func:`standardize_inplace` repeats scikit-learn's arithmetic without depending on it
(``_incremental_mean_and_var`` per chunk in float64, the near-constant test of
``_is_constant_feature``, then the dense ``transform`` of scikit-learn 1.0.1:
``X -= mean_; X /= scale_`` on the float32 rows with the float64 statistics, each step
rounded to float32). scikit-learn releases that cast ``mean_``/``scale_`` to float32 first
(1.9.1 does) differ from that by the float32 rounding of the mean (up to 2.4e-6 on the
standardised values of the pinned test set, whose columns have offsets of 50-150).

:func:`faiss_pca` and :func:`faiss_kmeans` call faiss itself, so they inherit its behaviour:
``PCAMatrix.train`` fits on at most ``max_points_per_d * d = 1000 * d`` rows: when there are
more, on the rows ``faiss.rand_perm(N, 1234)[:1000 * d]`` (``fvecs_maybe_subsample``, a fixed
seed; checked against faiss 1.15.1), with a float32 covariance. ``Kmeans`` trains on at most
``256 * k`` rows (``max_points_per_centroid``, drawn with ``seed``), initialises each of the
``nredo`` restarts with ``k`` random training rows and keeps the restart with the lowest
objective; ``index.search`` then assigns every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from densessl.errors import ConfigError

__all__ = [
    "FAISS_HINT",
    "MissingFaissError",
    "faiss_available",
    "faiss_kmeans",
    "faiss_pca",
    "require_faiss",
    "standardize_inplace",
]

#: Rows per ``partial_fit`` / ``transform`` call in Leopart's ``normalize_and_transform``.
LEOPART_CHUNK = 100_000

FAISS_HINT = (
    "install it with `pip install 'densessl[faiss]'` (or `pip install faiss-cpu`), or set "
    "backend=torch (an approximation of the official numbers, see "
    "densessl.evaluation.overcluster)"
)


def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class MissingFaissError(ConfigError, ImportError):
    """faiss is needed (``backend="faiss"``) but cannot be imported.

    A :class:`~densessl.errors.ConfigError` (``densessl eval`` prints ``densessl: error:
    ...`` and exits 2) and an ``ImportError``.
    """


def require_faiss(what: str = "backend=faiss") -> Any:
    """``import faiss``, or raise :class:`MissingFaissError` saying how to get it."""
    try:
        import faiss
    except ImportError as err:
        msg = f"{what} needs faiss, which is not installed: {FAISS_HINT}"
        raise MissingFaissError(msg) from err
    return faiss


def _sum64(x: np.ndarray) -> np.ndarray:
    """Column sums of a float array with a float64 accumulator (sklearn's
    ``_safe_accumulator_op(np.sum, x, axis=0)``)."""
    return np.sum(x, axis=0, dtype=np.float64)


def _partial_fit(
    chunk: np.ndarray, mean: np.ndarray, var: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """One ``StandardScaler.partial_fit`` step (sklearn ``_incremental_mean_and_var``)."""
    last_sum = mean * count
    new_sum = _sum64(chunk)
    n_new = chunk.shape[0]
    updated_count = count + n_new
    updated_mean = (last_sum + new_sum) / updated_count
    temp = chunk - new_sum / n_new  # float64
    correction = _sum64(temp)
    temp **= 2
    new_var = _sum64(temp)
    new_var -= correction**2 / n_new
    if count == 0:
        updated_var = new_var / updated_count
    else:
        ratio = count / n_new
        total = var * count + new_var + ratio / updated_count * (last_sum / ratio - new_sum) ** 2
        updated_var = total / updated_count
    return updated_mean, updated_var, updated_count


def standardize_inplace(
    x: np.ndarray, chunk_size: int = LEOPART_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise the float32 rows of ``x`` ``[N, D]`` in place, as Leopart does.

    Statistics are accumulated chunk by chunk as ``StandardScaler.partial_fit`` does (float64
    mean and population variance, Chan-Golub-LeVeque updates); near-constant columns
    (``var <= n * eps * var + (n * mean * eps) ** 2``) get scale 1. Then every chunk is
    transformed with scikit-learn 1.0.1's dense arithmetic: ``x -= mean`` and ``x /= scale``
    evaluated in float64 and stored in float32 after each step.

    Returns:
        ``(mean [D] float64, scale [D] float64)``.
    """
    if x.ndim != 2 or x.dtype != np.float32:
        raise ValueError(f"x must be a float32 [N, D] array, got {x.dtype} {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x has no rows")
    d = x.shape[1]
    mean, var, count = np.zeros(d), np.zeros(d), 0
    for s in range(0, x.shape[0], chunk_size):
        mean, var, count = _partial_fit(x[s : s + chunk_size], mean, var, count)
    eps = np.finfo(np.float64).eps
    constant = var <= count * eps * var + (count * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[constant] = 1.0
    for s in range(0, x.shape[0], chunk_size):
        block = x[s : s + chunk_size]
        block -= mean
        block /= scale
    return mean, scale


def faiss_pca(x: np.ndarray, dim: int) -> np.ndarray:
    """``faiss.PCAMatrix(D, dim)`` trained on ``x`` and applied to it (``apply_py``).

    faiss trains on at most ``1000 * D`` rows (its own seeded sub-sample), in float32.
    """
    faiss = require_faiss("PCA with backend=faiss")
    x = np.ascontiguousarray(x, dtype=np.float32)
    pca = faiss.PCAMatrix(x.shape[1], dim)
    pca.train(x)
    if not pca.is_trained:  # pragma: no cover - faiss always trains here
        raise RuntimeError("faiss.PCAMatrix did not train")
    return pca.apply_py(x)


def faiss_kmeans(
    x: np.ndarray,
    k: int,
    iters: int = 100,
    seed: int = 0,
    n_init: int = 5,
    spherical: bool = False,
    max_points_per_centroid: int | None = 256,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``faiss.Kmeans(D, k, niter=iters, nredo=n_init, seed=seed, gpu=False)`` + ``search``.

    Args:
        x: ``[N, D]`` rows (converted to contiguous float32).
        max_points_per_centroid: faiss' training cap per centroid (``None``: all rows).

    Returns:
        ``(centroids [k, D] float32, assignments [N] int64, summed squared distances)``, the
        assignments from ``km.index.search(x, 1)`` as in Leopart's ``cluster``.
    """
    faiss = require_faiss("k-means with backend=faiss")
    data = np.ascontiguousarray(x, dtype=np.float32)
    mppc = max_points_per_centroid if max_points_per_centroid is not None else data.shape[0]
    km = faiss.Kmeans(
        data.shape[1],
        k,
        niter=iters,
        nredo=n_init,
        seed=seed,
        gpu=False,
        spherical=spherical,
        max_points_per_centroid=mppc,
        verbose=False,
    )
    km.train(data)
    dist, labels = km.index.search(data, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64), float(dist.astype(np.float64).sum())
