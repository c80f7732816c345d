"""k-NN classification (DINO eval_knn.py): parity, floor vs ceiling, API and CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from densessl.cli import main
from densessl.data.registry import build_dataset
from densessl.evaluation.api import evaluate
from densessl.evaluation.knn import KNNProtocol, knn_classify
from densessl.evaluation.oracle import label_palette


def _fixed_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=g)
    train_l = torch.randint(0, 10, (300,), generator=g)
    test_l = torch.randint(0, 10, (200,), generator=g)
    train_f = centres[train_l] + 1.5 * torch.randn(300, 16, generator=g)
    test_f = centres[test_l] + 1.5 * torch.randn(200, 16, generator=g)
    return train_f, train_l, test_f, test_l


@pytest.mark.parametrize("k, top1, top5", [(20, 68.0, 99.0), (10, 67.0, 98.5), (3, 62.5, 87.0)])
def test_knn_matches_dinos_knn_classifier(k, top1, top5):
    """Pinned: facebookresearch/dino @7c446df5b9f45747937fb0d72314eb9f7b66930a, eval_knn.py
    ``knn_classifier(train, train_labels, test, test_labels, k, 0.07, num_classes=10)`` run on
    these features after ``F.normalize`` (k=3: top-5 counts the first 3 classes)."""
    train_f, train_l, test_f, test_l = _fixed_features()
    for chunk in (1000, 7):
        out = knn_classify(train_f, train_l, test_f, test_l, k, 0.07, 10, chunk)
        assert (out["top1"], out["top5"]) == pytest.approx((top1, top5))
        assert out["predictions"].shape == (200, 5)


def test_weighted_vote_beats_the_majority():
    # two far neighbours of class 0 outvoted by one very close neighbour of class 1
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = knn_classify(bank, torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.05]]),
                       torch.tensor([1]), 3, 0.07, 2)  # fmt: skip
    assert out["top1"] == 100.0


class _ClassPainted:
    """Each image painted in its class colour: features that are the label (the ceiling)."""

    def __init__(self, data):
        self.data, self.num_classes, self.class_names = data, data.num_classes, data.class_names
        self.palette = label_palette(data.num_classes)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        image = self.palette[item["label"]].view(3, 1, 1).expand(3, 64, 64).contiguous()
        return {**item, "image": image}


def _pooled(images):
    return F.avg_pool2d(images, 16).permute(0, 2, 3, 1)


def test_random_floor_and_label_ceiling_separate_on_scenes():
    train = build_dataset("scenes", None, "train", "classification", num_images=60, size=64)
    val = build_dataset("scenes", None, "val", "classification", num_images=60, size=64)
    assert train.num_classes == 8 and len(val) > 5
    settings = KNNProtocol.for_scenes(64)
    pixels = evaluate("knn", _pooled, verbose=False, progress=False,
                       data={"num_images": 60, "size": 64})  # fmt: skip
    from densessl.evaluation.knn import evaluate_knn

    oracle = evaluate_knn(_pooled, _ClassPainted(train), _ClassPainted(val), settings,
                          progress=False)  # fmt: skip
    assert oracle["top1"] == 100.0 and oracle["pooling"] == "mean_patches"
    assert pixels["results"]["top1"] < 80.0  # mean colour of the scene: far from the ceiling
    assert len(pixels["results"]["per_item"]) == len(val)


def test_cli_knn_on_scenes_writes_json(tmp_path, capsys):
    out = tmp_path / "knn.json"
    code = main(["eval", "knn", "--backbone", "random:vit_tiny", "--out", str(out),
                 "--no-progress", "data.num_images=20", "data.size=64", "num_neighbors=5",
                 "extra_neighbors=[1]"])  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["dataset"]["kind"] == "classification"
    assert record["source"].startswith("facebookresearch/dino @7c446df")
    assert record["results"]["pooling"] == "cls" and set(record["results"]["by_k"]) == {"5", "1"}
    assert record["settings"]["num_neighbors"] == 5
    assert "top-1" in capsys.readouterr().out


def test_knn_settings_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        KNNProtocol(temperature=0.0)
    with pytest.raises(ValueError, match="crop"):
        KNNProtocol(crop=300)
    with pytest.raises(ValueError, match="pool"):
        KNNProtocol(pool="max")


def test_linear_classifier_floor_and_ceiling_on_scenes():
    from densessl.evaluation.linear_classifier import (
        LinearClassifierProtocol,
        evaluate_linear_cls,
    )

    train = build_dataset("scenes", None, "train", "classification", num_images=60, size=64)
    val = build_dataset("scenes", None, "val", "classification", num_images=60, size=64)
    settings = LinearClassifierProtocol.for_scenes(64)
    oracle = evaluate_linear_cls(_pooled, _ClassPainted(train), _ClassPainted(val), settings,
                                 progress=False)  # fmt: skip
    assert oracle["top1"] == 100.0 and len(oracle["per_epoch"]) == settings.epochs
    pixels = evaluate_linear_cls(_pooled, train, val, settings, progress=False)
    assert pixels["top1"] < 80.0 and pixels["pooling"] == "mean_patches"


def test_linear_classifier_reads_the_last_blocks_cls():
    from densessl.evaluation.features import random_init
    from densessl.evaluation.image_features import image_features, last_blocks_cls
    from densessl.models.vit import BackboneConfig

    small = random_init(BackboneConfig(arch="vit_tiny", embed_dim=32, depth=3, num_heads=2))
    images = torch.randn(2, 3, 32, 32)
    four = last_blocks_cls(small, images, 3)
    assert four.shape == (2, 96)
    assert torch.allclose(four[:, 64:], image_features(small, images)[0], atol=1e-5)
    with pytest.raises(ValueError, match="n_last_blocks=4 but the backbone has 3 blocks"):
        last_blocks_cls(small, images, 4)
    out = evaluate("linear_cls", small, verbose=False, progress=False, epochs=2, n_last_blocks=2,
                   data={"num_images": 20, "size": 64})  # fmt: skip
    assert out["results"]["feature_dim"] == 64 and out["settings"]["epochs"] == 2
    assert out["source"] == "facebookresearch/dino @7c446df, eval_linear.py"
