"""Object discovery (LOST + CorLoc): parity, keys hook, floor vs oracle, API and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from densessl.cli import main
from densessl.data.boxes.scene_boxes import SyntheticSceneBoxes
from densessl.evaluation.api import evaluate
from densessl.evaluation.discovery import DiscoveryProtocol, evaluate_discovery
from densessl.evaluation.features import random_init
from densessl.evaluation.image_features import last_block_keys
from densessl.evaluation.lost import box_iou, corloc, lost_box
from densessl.evaluation.oracle import LabelOracle, label_palette
from densessl.models.vit import BackboneConfig


def _object_features(seed, h, w, d):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(h * w, d, generator=g)
    bg = torch.randn(d, generator=g)
    feats = feats * 0.5 + bg
    for r in range(1, 4):
        for c in range(2, 4):
            feats[r * w + c] = -bg + 0.3 * torch.randn(d, generator=g)
    return feats


# Pinned: valeoai/LOST @fcedbecb644f18358a660ce58c739cc6374feda8, object_discovery.py
# lost(feats[None], (h, w), [16, 16], (3, H, W), k_patches=k) on these features.
@pytest.mark.parametrize(
    "seed, h, w, d, k, size, want_seed, want_box",
    [
        (0, 6, 8, 8, 100, (90, 120), 26, [32, 16, 64, 64]),
        (1, 5, 7, 16, 10, (80, 100), 17, [32, 16, 64, 64]),
        (2, 6, 8, 8, 5, (96, 128), 26, [32, 16, 64, 64]),
    ],
)
def test_lost_matches_the_official_seed_and_box(seed, h, w, d, k, size, want_seed, want_box):
    out = lost_box(_object_features(seed, h, w, d), (h, w), 16, size, k)
    assert (out["seed"], out["box"]) == (want_seed, want_box)


def test_lost_ties_and_clipping_match_the_official_code():
    """Random features with tied degrees (6 at patches 17 and 18), the box clipped to H=60;
    LOST @fcedbec: seed 17, box [0, 32, 48, 60]."""
    feats = torch.randn(20, 4, generator=torch.Generator().manual_seed(3))
    out = lost_box(feats, (4, 5), 16, (60, 75), 100)
    assert (out["seed"], out["box"], out["seed_degree"]) == (17, [0, 32, 48, 60], 6)


def test_box_iou_matches_lost_bbox_iou():
    """LOST @fcedbec datasets.py bbox_iou on int64 boxes (exactly 0.5 stays a hit)."""
    gt = torch.tensor([[0, 0, 32, 32], [10, 10, 50, 40], [16, 0, 48, 32]])
    want = {
        (0, 0, 32, 16): [0.5, 0.0835443064570427, 0.20000000298023224],
        (0, 0, 64, 32): [0.5, 0.37162160873413086, 0.5],
        (12, 8, 44, 40): [0.30612245202064514, 0.7594936490058899, 0.4883720874786377],
        (0, 0, 16, 16): [0.25, 0.0253521129488945, 0.0],
    }
    for box, ious in want.items():
        got = box_iou(list(box), gt)
        assert got.tolist() == pytest.approx(ious, abs=1e-7)
        assert bool((got >= 0.5).any()) == (max(ious) >= 0.5)


def test_corloc_matches_lost_main_loop():
    """LOST @fcedbec main_lost.py:318-344 (bbox_iou, any IoU >= 0.5, 100 * hits / cnt) on
    these boxes: 60.0, hits [1, 1, 0, 1, 0]."""
    preds = [[0, 0, 32, 16], [12, 8, 44, 40], [0, 0, 16, 16], [16, 16, 64, 48], [5, 5, 30, 30]]
    gts = [[[0, 0, 32, 32]], [[10, 10, 50, 40], [16, 0, 48, 32]], [[0, 0, 16, 40]],
           [[16, 16, 64, 48]], [[40, 40, 60, 60]]]  # fmt: skip
    assert corloc(preds, [torch.tensor(g) for g in gts]) == 60.0
    assert corloc(preds[:1], [torch.zeros(0, 4)]) == 0.0  # no GT box: a miss


def test_last_block_keys_are_the_qkv_key_third():
    config = BackboneConfig(arch="vit_tiny", patch_size=8, embed_dim=32, depth=2, num_heads=2)
    extractor = random_init(config)
    images = torch.randn(2, 3, 16, 24)
    keys = last_block_keys(extractor, images)
    vit = extractor.model.model
    assert keys.shape == (2, 6, 32)
    # the keys equal qkv(norm1(input of the last block)) for the patch tokens
    captured = {}
    hook = vit.blocks[-1].norm1.register_forward_hook(lambda m, a, o: captured.update(y=o))
    extractor(images)
    hook.remove()
    manual = nn.functional.linear(captured["y"], vit.blocks[-1].attn.qkv.weight,
                                  vit.blocks[-1].attn.qkv.bias)[:, 1:, 32:64]  # fmt: skip
    assert torch.allclose(keys, manual, atol=1e-6)


class _Painted:
    """Scene boxes whose images are their label maps in the oracle palette."""

    def __init__(self, boxes):
        self.boxes, self.palette = boxes, label_palette(boxes.scenes.num_classes + 1)

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        item = self.boxes[i]
        label = self.boxes.scenes[self.boxes.items[i][0]]["label"].long()
        label = torch.where(label == 255, self.boxes.scenes.num_classes, label)
        return {**item, "image": self.palette[label].permute(2, 0, 1).contiguous()}


class _ObjectOracle(nn.Module):
    """Per patch: one-hot of its majority thing class, or one shared 'background' channel."""

    def __init__(self, num_classes, stuff, patch_size):
        super().__init__()
        self.decode, self.stuff, self.patch_size = (
            LabelOracle(num_classes, patch_size),
            stuff,
            patch_size,
        )

    def forward(self, images):
        major = self.decode(images).argmax(-1)  # the patch's majority class
        thing = (major - self.stuff).clamp(min=0) + 1
        thing = torch.where((major >= self.stuff) & (major < self.decode.num_classes), thing, 0)
        return nn.functional.one_hot(thing, self.decode.num_classes - self.stuff + 1).float()


def test_random_floor_and_oracle_separate_on_scenes():
    val = SyntheticSceneBoxes("val", 40, 64, min_area=64)
    stuff = val.scenes.config.num_stuff_classes
    oracle = _ObjectOracle(val.scenes.num_classes, stuff, 8)
    settings = DiscoveryProtocol.for_scenes(64, features="patches")
    ceiling = evaluate_discovery(oracle, None, _Painted(val), settings, progress=False)
    small = random_init(BackboneConfig(arch="vit_tiny", patch_size=8, embed_dim=64, depth=2,
                                       num_heads=2))  # fmt: skip
    floor = evaluate("discovery", small, verbose=False, progress=False,
                     data={"num_images": 40, "size": 64, "min_area": 64})  # fmt: skip
    assert floor["results"]["num_images"] == ceiling["num_images"] == len(val)
    assert ceiling["corloc"] >= floor["results"]["corloc"] + 30.0, (ceiling, floor["results"])


def test_cli_discovery_on_scenes_writes_json(tmp_path, capsys):
    out = tmp_path / "d.json"
    code = main(["eval", "lost", "--backbone", "random:vit_tiny", "--out", str(out),
                 "--no-progress", "data.num_images=4", "data.size=64", "k_patches=10"])  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["protocol"] == "discovery" and record["dataset"]["kind"] == "boxes"
    assert record["settings"]["k_patches"] == 10 and record["source"].startswith("valeoai/LOST")
    assert len(record["results"]["per_image"]) == record["results"]["num_images"] > 0
    assert "CorLoc %" in capsys.readouterr().out


def test_discovery_settings_are_checked():
    with pytest.raises(ValueError, match="k_patches"):
        DiscoveryProtocol(k_patches=0)
    with pytest.raises(ValueError, match="features"):
        DiscoveryProtocol(features="values")
