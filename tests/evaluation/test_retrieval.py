"""Dense NN retrieval (Hummingbird): building blocks, oracle (~1.0) and random features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densessl.evaluation.miou import matched_miou
from densessl.evaluation.preprocess import resize_label, sample_crop_box
from densessl.evaluation.retrieval import (
    RetrievalProtocol,
    _AugmentedMemoryView,
    build_memory,
    evaluate_retrieval,
    knn_search,
    patch_label_histograms,
    select_rare_patches,
)
from helpers import NUM_HUES, HueOracle, HueRectangles, RandomFeatures

NUM_CLASSES = NUM_HUES


class ToyRectangles(HueRectangles):
    """``HueRectangles``: every 4th image is 40x48 (a 10x12-px grid)."""

    odd_every, odd_size = 4, (40, 48)


def tiny(**kw) -> RetrievalProtocol:
    return RetrievalProtocol.for_scenes(image_size=32, batch_size=8, **kw)


def test_sample_crop_box_rules():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = sample_crop_box(40, 60, (0.5, 2.0), (3 / 4, 4 / 3), gen)
        assert top >= 0 and top + h <= 40 and left >= 0 and left + w <= 60
        assert 0.5 * 2400 * 0.9 <= h * w <= 2400
    # every draw larger than the image -> central crop with the ratio clamped to 4/3
    assert sample_crop_box(40, 60, (5.0, 6.0), (3 / 4, 4 / 3), gen) == (0, 3, 40, 53)
    a = sample_crop_box(40, 60, (0.5, 2.0), (0.75, 1.33), torch.Generator().manual_seed(3))
    b = sample_crop_box(40, 60, (0.5, 2.0), (0.75, 1.33), torch.Generator().manual_seed(3))
    assert a == b


def test_augmented_view_is_seeded_and_sized():
    ds = ToyRectangles(4, seed=0)
    p = tiny()
    one, two = _AugmentedMemoryView(ds, p, 0)[3], _AugmentedMemoryView(ds, p, 0)[3]
    assert torch.equal(one["image"], two["image"]) and torch.equal(one["label"], two["label"])
    assert one["image"].shape == (3, 32, 32) and one["label"].shape == (32, 32)
    other = _AugmentedMemoryView(ds, p, 1)[3]
    assert not torch.equal(one["image"], other["image"])


def test_patch_label_histograms_hand_case():
    label = torch.tensor(
        [[0, 0, 1, 1], [0, 255, 1, 2], [3, 3, 255, 255], [3, 3, 255, 255]], dtype=torch.uint8
    )
    counts = patch_label_histograms(label[None], (2, 2), 4)
    assert counts[0].tolist() == [[3, 0, 0, 0], [0, 3, 1, 0], [0, 0, 0, 4], [0, 0, 0, 0]]
    # labels outside [0, C) are never counted, even without an ignore index
    assert patch_label_histograms(label[None], (2, 2), 4, ignore_index=None).sum() == 11
    # non-divisible sizes: pixel row y goes to patch row floor(y * h / H)
    counts = patch_label_histograms(torch.arange(3).view(1, 1, 3).expand(1, 2, 3), (1, 2), 3)
    assert counts[0].tolist() == [[2, 2, 0], [0, 0, 2]]


def test_select_rare_patches_favours_rare_classes():
    counts = torch.zeros(1, 16, 3, dtype=torch.int64)
    counts[0, :, 0] = 64
    counts[0, 5] = torch.tensor([0, 64, 0])  # the only patch with class 1
    counts[0, 9] = 0  # an all-ignored patch
    gen = torch.Generator().manual_seed(0)
    picks = torch.cat([select_rare_patches(counts, 1, gen) for _ in range(200)])
    # score 1 * U for the rare patch vs 14 * U for the others: picked ~60% of the time,
    # where uniform sampling would give 1/16
    assert (picks == 5).float().mean() > 0.4
    everything = select_rare_patches(counts, 16, gen)[0]
    assert everything[-1] == 9  # empty patches come last


@pytest.mark.parametrize(("query_chunk", "key_chunk"), [(1000, 10_000), (7, 3), (5, 13)])
def test_knn_search_matches_brute_force(query_chunk, key_chunk):
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(40, 6, generator=gen), dim=1)
    keys = F.normalize(torch.randn(100, 6, generator=gen), dim=1)
    sims, idx = knn_search(q, keys, 5, query_chunk=query_chunk, key_chunk=key_chunk)
    ref_s, ref_i = (q @ keys.T).topk(5, dim=1)
    assert torch.allclose(sims, ref_s, atol=1e-6) and torch.equal(idx, ref_i)


def test_knn_search_faiss_when_installed():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(0)
    q, keys = torch.randn(20, 8, generator=gen), torch.randn(50, 8, generator=gen)
    sims, idx = knn_search(q, keys, 4, backend="faiss")
    ref = (q @ keys.T).topk(4, dim=1)
    assert torch.equal(idx, ref.indices) and torch.allclose(sims, ref.values, atol=1e-5)


def test_memory_size_labels_and_determinism():
    ds = ToyRectangles(6, seed=1)
    feats, labels = build_memory(HueOracle(), ds, tiny(memory_size=None), progress=False)
    assert feats.shape == (6 * 2 * 16, 8) and labels.shape == (6 * 2 * 16, NUM_CLASSES)
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(feats)), atol=1e-5)
    sums = labels.sum(dim=1)
    assert torch.all((sums - 1).abs() < 1e-5)  # no patch is fully ignored here
    f1, l1 = build_memory(HueOracle(), ds, tiny(memory_size=50), progress=False)
    f2, l2 = build_memory(HueOracle(), ds, tiny(memory_size=50), progress=False)
    assert f1.shape == (6 * 2 * 4, 8)  # 50 // (6 images * 2 passes) = 4 patches per image
    assert torch.equal(l1, l2) and torch.allclose(f1, f2, atol=0.5)  # oracle noise differs


def test_ignore_to_background_option():
    class AllIgnored(ToyRectangles):
        def __getitem__(self, i):
            item = dict(self.items[i])
            item["label"] = torch.full_like(item["label"], 255)
            return item

    ds = AllIgnored(2, seed=0)
    _, labels = build_memory(HueOracle(), ds, tiny(memory_size=None), progress=False)
    assert labels.abs().sum() == 0  # default: ignored pixels are not counted
    _, labels = build_memory(
        HueOracle(), ds, tiny(memory_size=None, ignore_to_background=True), progress=False
    )
    assert torch.all(labels[:, 0] == 1)  # official behaviour: ignored pixels become class 0


def bilinear_bound(dataset) -> float:
    """mIoU of the bilinearly upsampled one-hot patch-majority map: the protocol's ceiling
    (bilinear upsampling rounds the corners of one-patch regions)."""
    labels = torch.stack([resize_label(dataset[i]["label"], 32) for i in range(len(dataset))])
    valid = (labels != 255).unsqueeze(1)
    onehot = F.one_hot(labels.clamp_max(3), NUM_CLASSES).permute(0, 3, 1, 2).float() * valid
    votes = F.one_hot(F.avg_pool2d(onehot, 8).argmax(1), NUM_CLASSES).permute(0, 3, 1, 2)
    pred = F.interpolate(votes.float(), size=32, mode="bilinear", align_corners=False).argmax(1)
    return matched_miou(pred, labels, NUM_CLASSES, matching="none")["miou"]


def test_oracle_features_retrieve_near_perfect_masks():
    train, val = ToyRectangles(24, seed=0), ToyRectangles(12, seed=1)
    bound = bilinear_bound(val)
    assert bound > 0.9
    plain = tiny(memory_size=None, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0)
    out = evaluate_retrieval(HueOracle(), train, val, plain, progress=False)
    assert out["miou"] == pytest.approx(bound, abs=0.005)  # pure memory: the ceiling
    out = evaluate_retrieval(HueOracle(), train, val, tiny(memory_size=300), progress=False)
    assert out["memory_size"] == 24 * 2 * 6
    assert out["miou"] == out["miou_no_matching"] > bound - 0.05
    assert out["miou_hungarian"] >= out["miou_no_matching"] - 1e-12
    assert len(out["per_class_iou"]) == NUM_CLASSES
    assert out["protocol"]["num_neighbors"] == 10


def test_random_features_score_low():
    train, val = ToyRectangles(24, seed=0), ToyRectangles(12, seed=1)
    out = evaluate_retrieval(RandomFeatures(), train, val, tiny(hungarian=True), progress=False)
    assert out["miou"] == out["miou_hungarian"]
    assert out["miou_no_matching"] < 0.4
