"""densessl.ops.cluster: k-means, standardisation and PCA."""

from __future__ import annotations

import pytest
import torch

from densessl.ops.cluster import (
    assign,
    fit_pca,
    fit_standardizer,
    kmeans,
    pca,
    standardize,
)


def blobs(n_per: int = 100, k: int = 5, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=gen) * 10
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centers[labels] + 0.1 * torch.randn(k * n_per, dim, generator=gen)
    perm = torch.randperm(k * n_per, generator=gen)
    return x[perm], labels[perm]


def is_same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = torch.unique(torch.stack([a, b], 1), dim=0)
    return len(pairs) == len(torch.unique(a)) == len(torch.unique(b))


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_recovers_separated_blobs(init):
    x, labels = blobs()
    res = kmeans(x, 5, seed=0, n_init=3 if init == "k-means++" else 10, init=init)
    assert is_same_partition(res.assignments, labels)
    assert res.centroids.shape == (5, 8)
    # inertia is the sum of squared distances to the assigned centroids
    direct = ((x - res.centroids[res.assignments]) ** 2).sum()
    assert res.inertia == pytest.approx(float(direct), rel=1e-4)
    assert res.inertia < 500 * 8 * 0.01 * 1.5


def test_deterministic_for_a_seed_and_tuple_unpacking():
    x, _ = blobs(k=6, seed=1)
    c1, a1, i1 = kmeans(x, 9, seed=3, n_init=2, chunk_size=37)
    c2, a2, i2 = kmeans(x, 9, seed=3, n_init=2, chunk_size=1000)
    assert torch.equal(a1, a2) and i1 == pytest.approx(i2, rel=1e-6)
    assert torch.allclose(c1, c2, atol=1e-5)


def test_empty_cluster_is_reseeded_to_farthest_point():
    x = torch.cat([torch.zeros(10, 1), torch.full((10, 1), 10.0), torch.full((1, 1), 20.0)])
    init = torch.tensor([[0.0], [0.0], [10.0]])  # cluster 1 loses every tie -> empty
    res = kmeans(x, 3, init=init)
    assert sorted(res.centroids.flatten().tolist()) == [0.0, 10.0, 20.0]
    assert res.inertia == 0.0
    assert torch.bincount(res.assignments, minlength=3).sort().values.tolist() == [1, 10, 10]


def test_subsampling_spherical_and_errors():
    x, labels = blobs(n_per=200, k=4)
    res = kmeans(x, 4, n_init=2, max_points_per_centroid=20, seed=0)
    assert res.assignments.shape == (800,)
    assert is_same_partition(res.assignments, labels)
    sph = kmeans(x, 4, spherical=True, n_init=2)
    assert torch.allclose(sph.centroids.norm(dim=1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError):
        kmeans(x, 801)
    with pytest.raises(ValueError):
        kmeans(x, 3, init="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kmeans(x, 3, backend="cuml")  # type: ignore[arg-type]


def test_assign_is_chunk_invariant():
    x, _ = blobs()
    c = x[:7]
    a1, d1 = assign(x, c, chunk_size=13)
    a2, d2 = assign(x, c, chunk_size=10_000)
    assert torch.equal(a1, a2) and torch.allclose(d1, d2)
    brute = torch.cdist(x, c).pow(2).argmin(dim=1)
    assert torch.equal(a1, brute)


def test_faiss_backend_when_installed():
    pytest.importorskip("faiss")
    x, labels = blobs()
    res = kmeans(x, 5, n_init=20, backend="faiss", seed=0)
    assert is_same_partition(res.assignments, labels)


def test_standardize_matches_population_statistics():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen) * torch.arange(1, 7) + 3
    x[:, 5] = 7.0  # constant column: scale 1, like sklearn's StandardScaler
    z = standardize(x, chunk_size=64)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(z[:, :5].std(0, unbiased=False), torch.ones(5), atol=1e-5)
    assert torch.all(z[:, 5] == 0)
    s = fit_standardizer(x)
    assert s.scale[5] == 1.0


def test_pca_matches_svd_of_centred_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=gen, dtype=torch.float64) * torch.linspace(5, 0.5, 10)
    x = x @ torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))[0] + 1.0
    model = fit_pca(x, dim=3, chunk_size=77)
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    assert torch.allclose(model.explained_variance, s[:3] ** 2 / 399, rtol=1e-8)
    assert torch.allclose(model.components.abs(), vh[:3].abs(), atol=1e-8)
    proj = pca(x, dim=3)
    assert proj.shape == (400, 3) and proj.dtype == torch.float32
    assert torch.allclose(proj.double().abs(), (xc @ vh[:3].T).abs(), atol=1e-4)
    # sign convention: the largest-magnitude loading of every axis is positive
    big = model.components.gather(1, model.components.abs().argmax(1, keepdim=True))
    assert torch.all(big > 0)
    assert fit_pca(x, dim=50).components.shape == (10, 10)  # clipped to D


def test_standardize_inplace_follows_sklearn_partial_fit_and_transform():
    import numpy as np

    from densessl.ops.faiss_backend import standardize_inplace

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 5)) * [1, 2, 3, 4, 5] + 100).astype(np.float32)
    x[:, 4] = 7.0  # constant column: scale 1, as sklearn's _is_constant_feature
    raw = x.copy()
    mean, scale = standardize_inplace(x, chunk_size=300)  # 4 partial_fit chunks
    ref = raw.astype(np.float64)
    assert np.allclose(mean, ref.mean(0), rtol=1e-13)
    assert np.allclose(scale[:4], ref[:, :4].std(0), rtol=1e-12) and scale[4] == 1.0
    # sklearn 1.0.1's transform: x -= mean; x /= scale, float64 arithmetic, float32 storage
    expected = ((raw - mean).astype(np.float32) / scale).astype(np.float32)
    assert np.array_equal(x, expected) and np.all(x[:, 4] == 0)
    again = raw.copy()
    standardize_inplace(again)  # one chunk: same statistics up to float64 rounding
    assert np.abs(again - x).max() <= 1e-5


def test_faiss_pca_and_kmeans_call_faiss_and_a_missing_faiss_is_reported(monkeypatch):
    pytest.importorskip("faiss")
    import sys

    from densessl.errors import ConfigError
    from densessl.ops.faiss_backend import faiss_pca

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=gen) * torch.tensor([6.0, 5, 4, 3, 2, 1])
    proj = torch.from_numpy(faiss_pca(x.numpy(), 3))  # 2000 rows < 1000 * 6: fitted on all
    ref = pca(x, dim=3)
    assert torch.allclose(proj.abs(), ref.abs(), atol=1e-3)
    monkeypatch.setitem(sys.modules, "faiss", None)
    for call in (lambda: faiss_pca(x.numpy(), 3), lambda: kmeans(x, 3, backend="faiss")):
        with pytest.raises(ConfigError, match=r"pip install 'densessl\[faiss\]'") as info:
            call()
        assert isinstance(info.value, ImportError)
    assert kmeans(x, 3, backend="auto").assignments.shape == (2000,)  # falls back to torch
