"""Overclustering protocol: preprocessing, an oracle extractor (~1.0) and random features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densessl.evaluation.miou import matched_miou
from densessl.evaluation.overcluster import (
    OverclusterProtocol,
    embed_dataset,
    evaluate_overclustering,
    resolve_num_clusters,
)
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
