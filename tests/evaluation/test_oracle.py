"""Ground truth as features: palette, painted labels, exact decoding, and a near-perfect probe."""

from __future__ import annotations

import torch

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.evaluation.linear.probe import LinearProtocol, train_linear_probe
from densessl.evaluation.oracle import LabelOracle, LabelPaintedDataset, label_palette
from densessl.evaluation.preprocess import normalize


class Hand:
    num_classes = 3
    ignore_index = 255
    class_names = ("a", "b", "c")

    def __init__(self) -> None:
        label = torch.zeros(4, 4, dtype=torch.uint8)
        label[:2, 2:] = 1
        label[2:, :2] = 2
        label[3, 3] = 255
        self.label = label

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "label": self.label, "index": i}


def test_palette_colours_are_distinct_and_far_apart():
    palette = label_palette(12).float()
    distance = torch.cdist(palette, palette) + torch.eye(12) * 1e9
    assert palette.shape == (12, 3) and distance.min() >= 127


def test_painted_labels_decode_exactly():
    dataset = LabelPaintedDataset(Hand())
    item = dataset[0]
    assert item["image"].dtype == torch.uint8 and torch.equal(item["label"], Hand().label)
    features = LabelOracle(3, patch_size=1)(normalize(item["image"].float() / 255)[None])[0]
    assert features.shape == (4, 4, 4)
    expected = torch.where(Hand().label == 255, 3, Hand().label.long())
    assert torch.equal(features.argmax(-1), expected)
    assert torch.equal(features.sum(-1), torch.ones(4, 4))
    pooled = LabelOracle(3, patch_size=2)(normalize(item["image"].float() / 255)[None])[0]
    assert pooled.shape == (2, 2, 4)
    assert torch.allclose(pooled[1, 1], torch.tensor([0.75, 0.0, 0.0, 0.25]))  # one ignored px
    assert torch.allclose(pooled[0, 1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_pixel_oracle_makes_the_linear_probe_near_perfect():
    common = {"num_images": 40, "size": 64, "seed": 5}
    train = LabelPaintedDataset(SyntheticScenes(split="train", **common))
    val = LabelPaintedDataset(SyntheticScenes(split="val", **common))
    protocol = LinearProtocol.for_scenes(image_size=64, epochs=80, lr_step_epoch=70)
    oracle = LabelOracle(train.num_classes, 1)
    out = train_linear_probe(oracle, train, val, protocol, progress=False)
    assert out["miou"] > 0.95, out["miou"]
