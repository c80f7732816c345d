"""Overclustering protocol: preprocessing, an oracle extractor (~1.0), random features, and the
default pipeline against values pinned with Leopart's own code."""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densessl.data.segmentation.coco import COCOStuff
from densessl.data.segmentation.voc import VOCSegmentation
from densessl.errors import ConfigError
from densessl.evaluation.miou import matched_miou
from densessl.evaluation.overcluster import (
    OverclusterProtocol,
    cluster_and_score,
    embed_dataset,
    evaluate_overclustering,
    resolve_num_clusters,
)
from densessl.evaluation.overcluster_parity import scored_images
from densessl.evaluation.preprocess import (
    ResizedSegmentation,
    collate_segmentation,
    normalize,
    resize_image,
    resize_label,
)
from helpers import NUM_HUES, HueOracle, HueRectangles, RandomFeatures

NUM_CLASSES = NUM_HUES


class ToyRectangles(HueRectangles):
    """``HueRectangles``: every 5th image is 48x40 instead of 32x32 (a 12x10-px grid)."""

    odd_every, odd_size = 5, (48, 40)


def majority_bound(dataset, size: int = 32, patch: int = 8) -> float:
    """mIoU of the per-patch majority map: the best any patch-level clustering can do."""
    labels = torch.stack([resize_label(dataset[i]["label"], size) for i in range(len(dataset))])
    valid = labels != 255
    onehot = F.one_hot(labels.clamp_max(NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()
    votes = F.avg_pool2d(onehot * valid.unsqueeze(1), patch).argmax(1)
    pred = votes.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return matched_miou(pred, labels, NUM_CLASSES, matching="none")["miou"]


def tiny_protocol(**kw) -> OverclusterProtocol:
    return OverclusterProtocol.for_scenes(image_size=32, batch_size=8, iters=30, **kw)


def test_preprocessing_and_collate():
    ds = ToyRectangles(n=5)
    item = ds[4]
    assert item["image"].shape == (3, 48, 40)
    wrapped = ResizedSegmentation(ds, image_size=32, mask_size=16)
    out = wrapped[4]
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["label"].shape == (16, 16) and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) <= {0, 1, 2, 3, 255}
    expected = normalize(resize_image(item["image"], 32))
    assert torch.allclose(out["image"], expected)
    # normalisation uses the correct ImageNet std (0.225 for blue)
    white = normalize(torch.ones(3, 1, 1))
    assert white[2].item() == pytest.approx((1 - 0.406) / 0.225)
    batch = collate_segmentation([wrapped[i] for i in range(5)])
    assert batch["image"].shape == (5, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    # nearest label resize of an exact 2x upsample is a pure repeat
    lab = torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8)
    assert resize_label(lab, 4).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 255, 255],
        [2, 2, 255, 255],
    ]


def test_resolve_num_clusters():
    assert resolve_num_clusters(("C", "4C", 21), 21) == [21, 84]
    assert resolve_num_clusters(500, 21) == [500]
    with pytest.raises(ValueError):
        resolve_num_clusters("K", 3)


def test_embed_dataset_shapes():
    feats, labels = embed_dataset(
        HueOracle(), ToyRectangles(n=6), 32, 32, batch_size=4, progress=False
    )
    assert feats.shape == (6, 4, 4, 8) and labels.shape == (6, 32, 32)


def test_oracle_features_reach_the_majority_bound():
    ds = ToyRectangles(n=20)
    bound = majority_bound(ds)
    assert bound > 0.85
    out = evaluate_overclustering(HueOracle(), ds, tiny_protocol(), progress=False)
    assert set(out["results"]) == {"K=4", "K=16"}
    k4, k16 = out["results"]["K=4"], out["results"]["K=16"]
    assert k4["matching"] == "hungarian" and k16["matching"] == "many_to_one"
    assert len(k4["per_seed"]) == 3
    assert k4["miou_mean"] > 0.9 and k16["miou_mean"] > 0.9
    assert k4["miou_mean"] == pytest.approx(bound, abs=0.02)
    assert k16["miou_mean"] == pytest.approx(bound, abs=0.02)
    assert out["protocol"]["image_size"] == 32 and out["grid"] == [4, 4]
    assert out["backend"] == "torch"  # the scenes preset: no faiss needed
    assert (out["num_images"], out["num_images_dropped"], out["drop_last"]) == (20, 0, False)
    assert any(d.startswith("backend=torch approximates") for d in out["differences_from_official"])


def test_random_features_score_near_chance():
    ds = ToyRectangles(n=20)
    out = evaluate_overclustering(RandomFeatures(), ds, tiny_protocol(), progress=False)
    # Chance for K = C Hungarian with balanced random clusters: IoU_c = p_c/C / (p_c + 1/C - p_c/C),
    # at most ~0.25 here (class 0 covers most pixels); many-to-one sends nearly every
    # cluster to class 0, giving about p_0 / C.
    counts = torch.bincount(
        torch.cat([ds[i]["label"].flatten().long() for i in range(20)]), minlength=256
    )
    p = counts[:NUM_CLASSES].double() / counts[:NUM_CLASSES].sum()
    chance = float((p / NUM_CLASSES / (p + 1 / NUM_CLASSES - p / NUM_CLASSES)).mean())
    k4 = out["results"]["K=4"]["miou_mean"]
    assert k4 < 0.4 and k4 == pytest.approx(chance, abs=0.1)
    assert out["results"]["K=16"]["miou_mean"] < 0.4
    assert not math.isnan(out["results"]["K=16"]["miou_std"])


def test_errors():
    with pytest.raises(ValueError):
        evaluate_overclustering(
            HueOracle(), ToyRectangles(n=2), tiny_protocol(num_clusters=100), progress=False
        )
    with pytest.raises(ValueError):
        evaluate_overclustering(
            lambda x: x.flatten(2), ToyRectangles(n=2), tiny_protocol(), progress=False
        )


def test_faiss_backend_when_installed():
    pytest.importorskip("faiss")
    protocol = tiny_protocol(backend="faiss", seeds=(0,))
    out = evaluate_overclustering(HueOracle(), ToyRectangles(n=20), protocol, progress=False)
    assert out["results"]["K=4"]["miou_mean"] > 0.9
    assert out["results"]["K=16"]["miou_mean"] > 0.9


# --------------------------------------------------------------------------------------------
# Parity with Leopart's official pipeline.
#
# The values below were computed once with Leopart's own code, MkuuWaUjinga/leopart @7835701
# experiments/utils.py (``normalize_and_transform``, ``cluster`` and ``PredsmIoU``; the file
# imported as is, with only its unused imports torchmetrics / data.VOCdevkit stubbed), run on
# ``synthetic_overcluster_data()`` the way ``Overcluster.validation_epoch_end`` in
# experiments/overcluster/sup_overcluster.py runs them: standardise + PCA once, then for each
# seed ``cluster(pca_dim=8, feats, 12, K, seed)``, the cluster map upsampled to 30 x 30 with
# ``F.interpolate(mode="nearest")``, pixels labelled 255 dropped, ``PredsmIoU(K, 4).compute``
# with Hungarian matching at K = C and many-to-one by precision at K > C. Libraries: faiss-cpu
# 1.15.1, numpy 2.4.6, torch 2.14.1, scikit-learn 1.9.1 (x86-64 Linux, Python 3.11). With
# scikit-learn 1.9.1's ``transform`` (statistics cast to float32) the standardised features
# differ from 1.0.1's arithmetic (Leopart's environment.yml, float64 statistics, which densessl
# implements) by up to 2.4e-6; the run was repeated with 1.0.1's ``X -= mean_; X /= scale_``
# patched in: both give the same assignments and mIoUs, and the checksums below are of the
# 1.0.1 variant. 103,680 rows of 16 dims: more than faiss' PCA cap of 1000 * 16 rows (faiss
# trains PCA on a sample) and more than one 100,000-row StandardScaler chunk; K-means trains on
# a 256 * K sample.
LEOPART_STANDARDIZED_SHA256 = "7721135a6ef0056ceb634a4c195b2c91a28f7dec5bba17f852678ec4af664c0b"
LEOPART_PROJECTED_ROW0 = [3.4753654, -3.6983974, -1.3302212, -0.8248576,
                          -0.2013608, -0.8329912, 1.3305813, -0.2820762]  # fmt: skip
LEOPART_MIOU = {  # (K, seed): per-seed mIoU
    (4, 0): 0.427085646601677,
    (4, 1): 0.8106955024788357,
    (4, 2): 0.8090203926358687,
    (12, 0): 0.8125720693910541,
    (12, 1): 0.8126265091234491,
    (12, 2): 0.8127842427715295,
}
LEOPART_ASSIGN_SHA256 = {  # (K, seed): sha256 of the int64 assignments of all rows
    (4, 0): "967f3bb6d1fb1ce6d15abf3f6d26343758e520a5a09361f0662ab8aa8f9e0dd5",
    (4, 1): "ced6bb033027b91a7eb8ef202520a1e39bac471ba9a12114acb7635d4085f667",
    (4, 2): "613eab9dc5da56117e96829d300b1c95001636327d3a2d37739b9b24dd99c23f",
    (12, 0): "54922b1d0bc7c90c0ef73699aafad4ba469ab08f64ae0aa9ae24fe5e07bc0dea",
    (12, 1): "c9df8bdb4aeec48ae5d91b43404ea50329f3f43f110663da8cc4abce636c2436",
    (12, 2): "37a32c98a33540386d7a6d04bbc55cee8f3c71807f623f34a78cd623af2f737e",
}
LEOPART_ASSIGN_FIRST = {  # (K, seed): assignments of the first 12 rows
    (4, 0): [1, 1, 1, 1, 1, 1, 0, 2, 0, 0, 2, 2],
    (4, 1): [2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3],
    (4, 2): [3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0],
    (12, 0): [2, 2, 2, 2, 2, 2, 10, 4, 5, 11, 9, 5],
    (12, 1): [9, 9, 9, 9, 9, 9, 11, 2, 5, 11, 4, 3],
    (12, 2): [0, 0, 0, 0, 0, 0, 4, 1, 5, 4, 6, 9],
}
N_IMAGES, GRID, DIM, MASK = 720, 12, 16, 30


def _hash_uniform(stream: int, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from splitmix64 of ``(stream, 0..n-1)`` (portable)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    z = (np.arange(1, n + 1, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 40)) * golden
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def synthetic_overcluster_data() -> tuple[np.ndarray, np.ndarray]:
    """``(features [N*12*12, 16] float32, labels [N, 30, 30] uint8, 255 = ignore)``, N = 720.

    Token classes: background plus 5 rectangles per image of classes 1-3 on the 12 x 12 grid;
    features = column offset (50-150) + column scale (0.1-10) x (class mean + noise + image
    shift); labels = the token map upsampled to 30 x 30, 1-px ignore edges, 5 % flipped.
    """
    n, g, d, c, m = N_IMAGES, GRID, DIM, NUM_CLASSES, MASK
    rect = _hash_uniform(1, n * 2 * 5).reshape(n, 2, 5)
    tokens = np.zeros((n, g, g), dtype=np.int64)
    for i in range(n):
        for y0, x0, h, w, cls in rect[i]:
            y, x = int(y0 * g * 0.75), int(x0 * g * 0.75)
            hh, ww = 2 + int(h * g * 0.5), 2 + int(w * g * 0.5)
            tokens[i, y : y + hh, x : x + ww] = 1 + int(cls * (c - 1))
    mu = (_hash_uniform(2, c * d).reshape(c, d) - 0.5) * 2.0
    noise = _hash_uniform(3, n * g * g * d * 4).reshape(n, g, g, d, 4).sum(-1) - 2.0
    shift = (_hash_uniform(4, n * d).reshape(n, 1, 1, d) - 0.5) * 0.6
    offset = 50.0 + 100.0 * _hash_uniform(5, d)
    scale = 0.1 + 10.0 * _hash_uniform(6, d)
    feats = offset + scale * (mu[tokens] + 0.9 * noise + shift)
    idx = np.arange(m) * g // m
    lab = tokens[:, idx][:, :, idx]
    edge = np.zeros_like(lab, dtype=bool)
    edge[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
    edge[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    flip = _hash_uniform(7, lab.size).reshape(lab.shape)
    other = (
        lab + 1 + (_hash_uniform(8, lab.size).reshape(lab.shape) * (c - 1)).astype(np.int64)
    ) % c
    lab = np.where(flip < 0.05, other, lab)
    lab = np.where(edge, 255, lab)
    return feats.reshape(n * g * g, d).astype(np.float32), lab.astype(np.uint8)


def test_default_pipeline_reproduces_leopart_per_seed_miou_and_assignments():
    pytest.importorskip("faiss")
    from densessl.ops.cluster import kmeans, prepare_features

    feats, labels = synthetic_overcluster_data()
    protocol = OverclusterProtocol(  # the defaults, at this toy set's sizes
        image_size=GRID * 16, mask_size=MASK, pca_dim=8, num_clusters=("C", "3C"), seeds=(0, 1, 2)
    )
    assert (protocol.backend, protocol.iters, protocol.n_init) == ("faiss", 100, 5)
    out = cluster_and_score(
        torch.from_numpy(feats.copy()).reshape(N_IMAGES, GRID, GRID, DIM),
        torch.from_numpy(labels).long(),
        NUM_CLASSES,
        protocol,
    )
    assert out["backend"] == "faiss"
    for (k, seed), miou in LEOPART_MIOU.items():
        entry = out["results"][f"K={k}"]
        assert entry["matching"] == ("hungarian" if k == NUM_CLASSES else "many_to_one")
        assert entry["per_seed"][seed] == pytest.approx(miou, abs=1e-6)

    x = torch.from_numpy(feats.copy())
    projected = prepare_features(x, pca_dim=8)  # standardises x in place, as Leopart
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == LEOPART_STANDARDIZED_SHA256
    assert projected.shape == (N_IMAGES * GRID * GRID, 8)
    assert projected[0].abs().tolist() == pytest.approx(np.abs(LEOPART_PROJECTED_ROW0), abs=1e-4)
    for (k, seed), digest in LEOPART_ASSIGN_SHA256.items():
        res = kmeans(projected, k, iters=100, seed=seed, n_init=5, max_points_per_centroid=256,
                     backend="faiss")  # fmt: skip
        assert res.assignments[:12].tolist() == LEOPART_ASSIGN_FIRST[(k, seed)]
        assert hashlib.sha256(res.assignments.numpy().tobytes()).hexdigest() == digest


class _FakeVOC(VOCSegmentation):
    num_classes, ignore_index = NUM_CLASSES, 255

    def __init__(self, n: int) -> None:  # no files: only the length matters here
        self.n = n

    def __len__(self) -> int:
        return self.n


class _FakeCOCO(COCOStuff):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_drop_last_follows_the_official_loader_and_counts_are_recorded():
    voc, counts = scored_images(_FakeVOC(1449), OverclusterProtocol())
    assert counts == {
        "drop_last": True, "num_images_total": 1449, "num_images": 1440, "num_images_dropped": 9
    }  # fmt: skip
    assert len(voc) == 1440
    _, counts = scored_images(_FakeVOC(1449), OverclusterProtocol(drop_last=False))
    assert (counts["num_images"], counts["num_images_dropped"]) == (1449, 0)
    _, counts = scored_images(_FakeCOCO(5000 - 1), OverclusterProtocol())  # COCO keeps all
    assert (counts["drop_last"], counts["num_images"]) == (False, 4999)
    with pytest.raises(ValueError, match="drop_last"):
        scored_images(_FakeVOC(59), OverclusterProtocol())

    ds = ToyRectangles(n=20)
    protocol = tiny_protocol(drop_last=True, seeds=(0,))  # batch_size 8: 20 -> 16 images
    out = evaluate_overclustering(HueOracle(), ds, protocol, progress=False)
    assert (out["num_images_total"], out["num_images"], out["num_images_dropped"]) == (20, 16, 4)
    assert out["drop_last"] is True and out["results"]["K=4"]["miou_mean"] > 0.85
    assert any("16 images scored" in d for d in out["differences_from_official"])


def test_missing_faiss_is_a_config_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    protocol = OverclusterProtocol(image_size=32, mask_size=32, seeds=(0,))

    def never(images):
        raise AssertionError("embedded before the backend was checked")

    with pytest.raises(ConfigError, match=r"densessl\[faiss\].*backend=torch") as info:
        evaluate_overclustering(never, ToyRectangles(n=4), protocol, progress=False)
    assert isinstance(info.value, ImportError)
    out = evaluate_overclustering(HueOracle(), ToyRectangles(n=20), tiny_protocol(), progress=False)
    assert out["backend"] == "torch" and out["results"]["K=4"]["miou_mean"] > 0.85
    auto = tiny_protocol(backend="auto", seeds=(0,))
    assert evaluate_overclustering(HueOracle(), ToyRectangles(n=8), auto, progress=False)[
        "backend"
    ] == "torch"  # fmt: skip


def test_gt_takes_leopart_label_rule_by_default():
    from densessl.evaluation.embed import embed_dataset
    from densessl.evaluation.preprocess_labels import view_label

    assert OverclusterProtocol().label_resize == "leopart"
    with pytest.raises(ValueError, match="label_resize"):
        OverclusterProtocol(label_resize="bicubic")
    data = ToyRectangles(n=6)  # image 5 is 48x40: both resizes move its labels

    def patches(images: torch.Tensor) -> torch.Tensor:
        return images[:, :, ::8, ::8].permute(0, 2, 3, 1)

    patches.patch_size = 8  # type: ignore[attr-defined]
    for rule in ("leopart", "floor"):
        _, labels = embed_dataset(patches, data, 48, 10, progress=False, label_resize=rule)
        for i in range(6):
            expected = view_label(data[i]["label"], 48, 10, mode=rule)
            assert torch.equal(labels[i], expected), rule
