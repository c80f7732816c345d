"""Overclustering protocol: preprocessing, an oracle extractor (~1.0) and random features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from densessl.evaluate.miou import matched_miou
from densessl.evaluate.overcluster import (
    OverclusterProtocol,
    embed_dataset,
    evaluate_overclustering,
    resolve_num_clusters,
)
from densessl.evaluate.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizedSegmentation,
    collate_segmentation,
    normalize,
    resize_image,
    resize_label,
)

NUM_CLASSES = 4
# class c is drawn with hue c / 4: red, chartreuse, cyan, violet
PALETTE = torch.tensor(
    [[255, 0, 0], [128, 255, 0], [0, 255, 255], [128, 0, 255]], dtype=torch.uint8
)


class ToyRectangles(Dataset):
    """Background (class 0) plus random rectangles of classes 1-3.

    Edges lie on the 8-px patch grid; every 5th image is 48x40 instead of 32x32 and uses a
    12x10-px grid, which lands on the same 8-px grid after resizing to 32x32. Each image has
    a 3x3 block labelled 255. Pixels are coloured by class (PALETTE), so an extractor can
    read the class off the image.
    """

    num_classes = NUM_CLASSES
    class_names = ("background", "a", "b", "c")
    ignore_index = 255

    def __init__(self, n: int = 20, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            (h, w), (gy, gx) = ((48, 40), (12, 10)) if i % 5 == 4 else ((32, 32), (8, 8))
            label = torch.zeros(h, w, dtype=torch.uint8)
            for _ in range(3):
                y0, x0 = torch.randint(0, 3, (2,), generator=gen).tolist()
                rh, rw = torch.randint(1, 3, (2,), generator=gen).tolist()
                y0, x0, rh, rw = y0 * gy, x0 * gx, rh * gy, rw * gx
                cls = int(torch.randint(1, NUM_CLASSES, (1,), generator=gen))
                label[y0 : y0 + rh, x0 : x0 + rw] = cls
            image = PALETTE[label.long()].permute(2, 0, 1).contiguous()
            y, x = torch.randint(0, h - 3, (2,), generator=gen).tolist()
            label[y : y + 3, x : x + 3] = 255
            self.items.append({"image": image, "label": label, "index": i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue in [0, 1) of float RGB ``[B, 3, H, W]``."""
    r, g, b = rgb.unbind(1)
    mx, mn = rgb.max(1).values, rgb.min(1).values
    delta = (mx - mn).clamp_min(1e-6)
    hue = torch.where(
        mx == r,
        ((g - b) / delta) % 6,
        torch.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4),
    )
    return hue / 6.0


class HueOracle:
    """Patch feature = one-hot of the majority class (decoded from hue) + small noise."""

    patch_size = 8

    def __init__(self, noise: float = 0.05, dim: int = 8) -> None:
        self.noise, self.dim = noise, dim
        self.gen = torch.Generator().manual_seed(123)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = images * std + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        hue = rgb_to_hue(rgb)
        dist = (hue.unsqueeze(1) - torch.arange(NUM_CLASSES).view(1, -1, 1, 1) / NUM_CLASSES).abs()
        cls = torch.minimum(dist, 1 - dist).argmin(1)
        votes = F.avg_pool2d(
            F.one_hot(cls, NUM_CLASSES).permute(0, 3, 1, 2).float(), self.patch_size
        )
        onehot = F.one_hot(votes.argmax(1), self.dim).float()  # [B, h, w, dim]
        return onehot + self.noise * torch.randn(onehot.shape, generator=self.gen)


class RandomFeatures:
    patch_size = 8

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(7)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.randn(b, h // 8, w // 8, 16, generator=self.gen)


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
