"""Linear / FCN segmentation probe: oracle and random features, ignore pixels, config errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from densessl.evaluation.linear.probe import (
    FCNHead,
    LinearHead,
    LinearProtocol,
    evaluate_head,
    train_linear_probe,
)
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from helpers import RandomFeatures

NUM_CLASSES = 4
PALETTE = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)


class Rectangles(Dataset):
    """32x32 background (class 0) with 2-3 random rectangles of classes 1-3, coloured by class.

    Rectangles are 16-24 px on the 8-px patch grid, so a patch-level oracle is nearly exact
    (only corners suffer from the bilinear logits). ``ignore_class`` relabels that class 255
    (its pixels keep their colour); ``noise_items`` appends random-colour images labelled 255.
    """

    num_classes = NUM_CLASSES
    class_names = ("background", "a", "b", "c")
    ignore_index = 255

    def __init__(
        self, n: int, seed: int, ignore_class: int | None = None, noise_items: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            label = torch.zeros(32, 32, dtype=torch.uint8)
            for _ in range(int(torch.randint(2, 4, (1,), generator=gen))):
                y0, x0 = (torch.randint(0, 3, (2,), generator=gen) * 8).tolist()
                h, w = (torch.randint(2, 4, (2,), generator=gen) * 8).tolist()
                label[y0 : y0 + h, x0 : x0 + w] = int(torch.randint(1, 4, (1,), generator=gen))
            image = PALETTE[label.long()].permute(2, 0, 1).contiguous()
            if ignore_class is not None:
                label[label == ignore_class] = 255
            self.items.append((image, label))
        for _ in range(noise_items):
            image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)
            self.items.append((image, torch.full((32, 32), 255, dtype=torch.uint8)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image, label = self.items[i]
        return {"image": image, "label": label, "index": i}


class Oracle(nn.Module):
    """Patch feature = one-hot of the patch's majority class (read off the colours) + noise."""

    patch_size = 8

    def __init__(self, noise: float = 0.1) -> None:
        super().__init__()
        self.noise = noise
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = (images * std + mean) * 255
        dist = ((rgb[:, None] - PALETTE.float().view(1, -1, 3, 1, 1)) ** 2).sum(2)
        onehot = F.one_hot(dist.argmin(1), NUM_CLASSES).permute(0, 3, 1, 2).float()
        votes = F.avg_pool2d(onehot, self.patch_size)
        feats = F.one_hot(votes.argmax(1), NUM_CLASSES).float()
        return feats + self.noise * torch.randn(feats.shape, generator=self.gen)


def toy_protocol(**overrides) -> LinearProtocol:
    base = dict(
        image_size=32,
        feature_size=32,
        mask_size_train=32,
        eval_mask_size=32,
        epochs=12,
        batch_size=8,
        lr=1.0,
        lr_step_epoch=10,
        cache_views=2,
        eval_batch_size=16,
    )
    return LinearProtocol(**{**base, **overrides})


@pytest.fixture(scope="module")
def data() -> tuple[Rectangles, Rectangles]:
    return Rectangles(32, seed=0), Rectangles(16, seed=1)


def test_oracle_features_reach_high_miou(data):
    train, val = data
    out = train_linear_probe(Oracle(), train, val, toy_protocol(), progress=False)
    assert out["miou"] > 0.9, out
    assert len(out["per_class_iou"]) == NUM_CLASSES
    assert out["class_names"] == list(Rectangles.class_names)
    assert out["protocol"]["lr"] == 1.0 and out["protocol"]["cache_views"] == 2
    assert out["grid"] == [4, 4] and out["feature_dim"] == NUM_CLASSES
    assert out["num_train"] == 32 and out["num_val"] == 16
    assert out["loss_history"][-1] < out["loss_history"][0]


def test_online_augmentation_mode(data):
    train, val = data
    out = train_linear_probe(Oracle(), train, val, toy_protocol(cache_views=0), progress=False)
    assert out["miou"] > 0.9, out


def test_random_features_score_low(data):
    train, val = data
    features = RandomFeatures(seed=1)
    out = train_linear_probe(features, train, val, toy_protocol(lr=0.1), progress=False)
    assert out["miou"] < 0.4, out


def test_ignore_pixels_do_not_count(data):
    _, val = data
    # Training images of random colours labelled 255 everywhere must not teach anything.
    noisy_train = Rectangles(32, seed=0, noise_items=16)
    out = train_linear_probe(
        Oracle(), noisy_train, val, toy_protocol(), progress=False, return_head=True
    )
    assert out["miou"] > 0.9, out
    # Val objects of class 3 relabelled 255, still drawn in class 3's colour: the head
    # predicts 3 there; counted, those pixels would be errors (or raise).
    val_ignored = Rectangles(16, seed=1, ignore_class=3)
    plain = evaluate_head(Oracle(), out["head"], val, toy_protocol(), progress=False)
    ignored = evaluate_head(Oracle(), out["head"], val_ignored, toy_protocol(), progress=False)
    num_class3 = sum(int((val[i]["label"] == 3).sum()) for i in range(len(val)))
    assert ignored["num_pixels"] == plain["num_pixels"] - num_class3 > 0
    for c in range(3):
        assert ignored["per_class_iou"][c] >= plain["per_class_iou"][c] - 1e-12
        assert ignored["per_class_iou"][c] > 0.9
    assert ignored["per_class_iou"][3] == 0.0  # no GT pixels left: IoU 0 (Leopart)


def test_all_ignored_training_set_is_finite(data):
    _, val = data
    empty = Rectangles(8, seed=2, noise_items=8)
    empty.items = empty.items[8:]  # only the all-255 items
    out = train_linear_probe(Oracle(), empty, val, toy_protocol(epochs=2), progress=False)
    assert out["loss_history"] == [0.0, 0.0]
    assert all(v == v for v in out["per_class_iou"])  # no nan


def test_fcn_head_learns(data):
    train, val = data
    protocol = toy_protocol(head="fcn", fcn_channels=16, feature_size=16, lr=0.5)
    out = train_linear_probe(Oracle(), train, val, protocol, progress=False)
    assert out["miou"] > 0.8, out


def test_seeded_and_leaves_global_rng_alone(data):
    train, val = data
    state = torch.get_rng_state()
    a = train_linear_probe(Oracle(), train, val, toy_protocol(epochs=3), progress=False)
    assert torch.equal(state, torch.get_rng_state())
    b = train_linear_probe(Oracle(), train, val, toy_protocol(epochs=3), progress=False)
    assert a["loss_history"] == b["loss_history"] and a["miou"] == b["miou"]


def test_views_do_not_depend_on_workers(data):
    train, val = data
    protocol = toy_protocol(epochs=2, cache_views=0)
    a = train_linear_probe(Oracle(), train, val, protocol, progress=False)
    b = train_linear_probe(Oracle(), train, val, replace(protocol, num_workers=2), progress=False)
    assert a["loss_history"] == b["loss_history"]


def test_return_head(data):
    train, val = data
    out = train_linear_probe(
        Oracle(), train, val, toy_protocol(epochs=1), progress=False, return_head=True
    )
    assert isinstance(out["head"], LinearHead)


def test_linear_head_commutes_with_upsampling():
    """Logits of the grid then upsampled == Leopart's upsample-features-then-1x1-conv."""
    torch.manual_seed(0)
    head = LinearHead(6, 3)
    feats = torch.randn(2, 6, 5, 5)
    ours = head(feats, (23, 23))
    up = F.interpolate(feats, size=(23, 23), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, head.conv(up), atol=1e-5, rtol=1e-5)


def test_fcn_head_shapes():
    head = FCNHead(6, 3, feature_size=10, channels=8, dropout=0.1)
    assert head(torch.randn(2, 6, 4, 4), (20, 20)).shape == (2, 3, 20, 20)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", -1.0),
        ("epochs", 0),
        ("head", "mlp"),
        ("crop_scale", (0.9, 0.5)),
        ("momentum", 1.0),
        ("batch_size", 2.5),
        ("cache_views", -1),
        ("flip", "yes"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"LinearProtocol.{field} "):
        LinearProtocol(**{field: value})


def test_from_dict_rejects_unknown_keys():
    assert LinearProtocol.from_dict({"lr": 0.5, "crop_scale": [0.5, 1.0]}).crop_scale == (0.5, 1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        LinearProtocol.from_dict({"learning_rate": 0.1})


def test_presets():
    paper = LinearProtocol()
    assert (paper.image_size, paper.feature_size, paper.eval_mask_size) == (448, 100, 448)
    assert (paper.epochs, paper.batch_size, paper.lr, paper.lr_step_epoch) == (25, 120, 0.01, 20)
    assert LinearProtocol.fcn().head == "fcn" and LinearProtocol.fcn().epochs == 30
    scenes = LinearProtocol.for_scenes()
    assert scenes.image_size == scenes.eval_mask_size == 96 and scenes.cache_views >= 1


def test_input_errors(data):
    train, val = data
    with pytest.raises(ValueError, match="image_size 36 is not a multiple"):
        train_linear_probe(Oracle(), train, val, toy_protocol(image_size=36), progress=False)
    other = Rectangles(2, seed=3)
    other.num_classes = 5
    with pytest.raises(ValueError, match="classes"):
        train_linear_probe(Oracle(), train, other, toy_protocol(), progress=False)
    bad = Rectangles(4, seed=3)
    bad.items[1][1][0, 0] = 7
    for views in (0, 1):
        with pytest.raises(ValueError, match=r"label values \[7\]"):
            train_linear_probe(Oracle(), bad, val, toy_protocol(cache_views=views), progress=False)
    with pytest.raises(ValueError, match="max_cache_gb"):
        train_linear_probe(Oracle(), train, val, toy_protocol(max_cache_gb=1e-9), progress=False)
