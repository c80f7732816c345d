"""mIoU and matching: hand-built exact cases and parity with Leopart's ``PredsmIoU``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densessl.evaluation.miou import (
    ConfusionMatrix,
    fold_confusion,
    hungarian_match,
    iou_per_class,
    many_to_one_match,
    matched_miou,
    mean_iou,
)


def t(values):
    return torch.tensor(values, dtype=torch.int64)


def test_identity_is_one_and_ignore_is_dropped():
    target = t([0, 0, 1, 2, 2, 255, 255])
    pred = t([0, 0, 1, 2, 2, 1, 0])  # wrong ids on ignored pixels must not matter
    for matching in ("none", "hungarian", "many_to_one"):
        res = matched_miou(pred, target, num_classes=3, matching=matching)
        assert res["miou"] == 1.0
        assert res["num_pixels"] == 5


def test_hand_computed_partial_case():
    target = t([0, 0, 0, 1, 1, 2])
    pred = t([0, 0, 1, 1, 1, 2])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    # class 0: TP 2, FN 1 -> 2/3; class 1: TP 2, FP 1 -> 2/3; class 2: 1
    assert cm.per_class_iou().tolist() == pytest.approx([2 / 3, 2 / 3, 1.0], abs=1e-12)
    assert cm.miou() == pytest.approx(7 / 9, abs=1e-12)
    assert cm.confusion.tolist() == [[2, 0, 0], [1, 2, 0], [0, 0, 1]]


def test_absent_class_counts_as_zero_unless_present_only():
    target = t([0, 0, 0, 1, 1, 2])
    pred = t([0, 0, 1, 1, 1, 2])
    res = matched_miou(pred, target, num_classes=4, matching="none")
    assert res["per_class_iou"][3] == 0.0
    assert res["miou"] == pytest.approx(7 / 12, abs=1e-12)  # Leopart: absent class -> IoU 0
    res = matched_miou(pred, target, num_classes=4, matching="none", present_only=True)
    assert res["miou"] == pytest.approx(7 / 9, abs=1e-12)
    # a class that is only predicted (never in GT) has IoU 0 and does count in present_only
    res = matched_miou(t([3, 0]), t([0, 0]), num_classes=4, matching="none", present_only=True)
    assert res["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_permuted_prediction_is_one_under_hungarian():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (1000,), generator=gen)
    perm = torch.randperm(5, generator=gen)
    pred = perm[target]
    res = matched_miou(pred, target, num_classes=5, matching="hungarian")
    assert res["miou"] == 1.0
    assert torch.tensor(res["mapping"])[perm].tolist() == list(range(5))
    assert matched_miou(pred, target, 5, matching="none")["miou"] < 1.0


def test_many_to_one_two_clusters_per_class_is_one():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2000,), generator=gen)
    pred = 2 * target + torch.randint(0, 2, (2000,), generator=gen)
    res = matched_miou(pred, target, num_classes=4, num_clusters=8, matching="many_to_one")
    assert res["miou"] == 1.0
    assert res["mapping"] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_many_to_one_precision_vs_iou_hand_case():
    # cluster 0 holds 3 px of class 0 and 2 px of class 1; class 1 has 2 px in total.
    conf = torch.tensor([[3, 2], [5, 0]])  # [K, C]
    # precision: cluster 0 -> class 0 (3/5 > 2/5)
    assert many_to_one_match(conf).tolist() == [0, 0]
    # IoU: cluster 0 with class 0: 3 / (5 + 8 - 3) = 0.3; with class 1: 2 / (5 + 2 - 2) = 0.4
    assert many_to_one_match(conf, criterion="iou").tolist() == [1, 0]
    # empty clusters go to class 0
    assert many_to_one_match(torch.tensor([[0, 0], [0, 4]])).tolist() == [0, 1]


def test_hungarian_unmatched_clusters_go_to_background():
    # K=3 > C=2: class 1 is cluster 1; class 0 is split between clusters 0 and 2.
    target = t([0, 0, 1, 1])
    pred = t([0, 2, 1, 1])
    res = matched_miou(pred, target, num_classes=2, num_clusters=3, matching="hungarian")
    assert sorted(res["mapping"]) == [0, 0, 1]
    assert res["miou"] == 1.0  # the unmatched half of class 0 lands on background 0
    # ... whereas background merging hurts when the unmatched cluster belongs to class 1
    target = t([0, 0, 1, 1, 1, 1])
    pred = t([0, 0, 1, 1, 2, 2])
    res = matched_miou(pred, target, num_classes=2, num_clusters=3, matching="hungarian")
    assert res["mapping"][0] == 0 and res["mapping"][2] == 0
    # class 0: TP 2, FP 2 -> 0.5; class 1: TP 2, FN 2 -> 0.5 (clusters 1/2 tie on IoU)
    assert res["miou"] == pytest.approx(0.5)
    assert hungarian_match(torch.tensor([[2, 0], [0, 2], [0, 2]]), background=1).tolist()[0] == 0


def test_streaming_equals_single_update_and_2d_inputs():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (4, 10, 10), generator=gen)
    target[:, 0] = 255
    pred = torch.randint(0, 6, (4, 10, 10), generator=gen)
    one = ConfusionMatrix(3, 6)
    one.update(pred, target)
    many = ConfusionMatrix(3, 6)
    for i in range(4):
        many.update(pred[i], target[i].to(torch.uint8))
    assert torch.equal(one.confusion, many.confusion)
    assert int(one.confusion.sum()) == 4 * 9 * 10


def test_fold_and_iou_helpers():
    conf = torch.tensor([[3, 1], [0, 2], [1, 1]])
    folded = fold_confusion(conf, torch.tensor([0, 1, -1]))
    assert folded.tolist() == [[3, 1], [0, 2]]
    iou = iou_per_class(conf)  # id 2 belongs to no class: only misses
    assert iou.tolist() == pytest.approx([3 / (4 + 4 - 3), 2 / (2 + 4 - 2)])
    assert mean_iou(torch.zeros(3, 3, dtype=torch.int64)) == 0.0
    assert np.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.int64), present_only=True))


def test_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(t([0, 3]), t([0, 1]))
    with pytest.raises(ValueError):
        cm.update(t([0, 1]), t([0, 7]))
    with pytest.raises(ValueError):
        cm.update(t([0, 1, 2]), t([0, 1]))
    with pytest.raises(ValueError):
        cm.miou(matching="greedy")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Parity with the official implementations.
# Reference values computed once by running, from /tmp and unchanged apart from stubbing
# the torchmetrics.Metric base class and joblib.Parallel:
#   * MkuuWaUjinga/leopart @7835701338d477c70d581c0a10e594257dcac198,
#     experiments/utils.py PredsmIoU.compute_miou (pixels with GT 255 filtered beforehand,
#     as experiments/overcluster/sup_overcluster.py does);
#   * vpariza/open-hummingbird-eval @5e79da292730edded800a89828b84f38469f5476,
#     hbird/utils/eval_metrics.py PredsmIoU(ignore_index=255).compute(...).
# Both gave identical values (printed with repr) and matchings.
# ---------------------------------------------------------------------------------------


def _parity_inputs():
    rng = np.random.default_rng(0)
    n = 5000
    gt = rng.choice([0, 1, 2, 3, 5], size=n, p=[0.4, 0.2, 0.15, 0.15, 0.1])  # class 4 absent
    perm6 = rng.permutation(6)
    pred_a = perm6[gt]
    noise = rng.random(n) < 0.3
    pred_a[noise] = rng.integers(0, 6, int(noise.sum()))
    perm14 = rng.permutation(14)
    pred_b = perm14[gt * 2 + rng.integers(0, 2, n)]
    noise = rng.random(n) < 0.3
    pred_b[noise] = rng.integers(0, 14, int(noise.sum()))
    ignore = rng.random(n) < 0.1
    gt_ign = gt.copy()
    gt_ign[ignore] = 255
    return gt_ign, pred_a, pred_b


PARITY = [
    # (case, K, matching, criterion, official mIoU, official pred->class mapping)
    ("A", 6, "hungarian", "precision", 0.4939066151523028, [1, 2, 0, 5, 3, 4]),
    ("A", 6, "none", "precision", 0.021611695313363214, [0, 1, 2, 3, 4, 5]),
    (
        "B",
        14,
        "many_to_one",
        "precision",
        0.5217386806065719,
        [0, 1, 5, 1, 0, 5, 0, 0, 2, 2, 0, 0, 3, 3],
    ),
    ("B", 14, "many_to_one", "iou", 0.5104423399058727, [0, 1, 5, 1, 0, 5, 5, 0, 2, 2, 0, 3, 3, 3]),
    (
        "B",
        14,
        "hungarian",
        "precision",
        0.3170333321164773,
        [4, 1, 5, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0],
    ),
]


@pytest.mark.parametrize(("case", "k", "matching", "criterion", "expected", "mapping"), PARITY)
def test_parity_with_official_predsmiou(case, k, matching, criterion, expected, mapping):
    gt, pred_a, pred_b = _parity_inputs()
    pred = pred_a if case == "A" else pred_b
    res = matched_miou(
        torch.from_numpy(pred),
        torch.from_numpy(gt),
        num_classes=6,
        num_clusters=k,
        matching=matching,
        criterion=criterion,
    )
    assert res["miou"] == pytest.approx(expected, abs=1e-6)
    assert res["mapping"] == mapping
