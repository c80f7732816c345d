"""``linear4``: DINOv2's multi-layer probe (last 4 blocks concatenated, BN, 1x1) on scenes."""

from __future__ import annotations

import pytest
import torch

from densessl.evaluation.api import evaluate
from densessl.evaluation.linear.heads import BNLinearHead
from densessl.evaluation.linear.multilayer import MultiLayerExtractor, MultiLayerProtocol
from densessl.models.vit import BackboneConfig, build_backbone


def tiny(depth: int = 4):
    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_tiny", patch_size=8, img_size=64, depth=depth,
                            embed_dim=32, num_heads=2)  # fmt: skip
    return build_backbone(config)


def test_features_are_the_last_blocks_normed_and_concatenated():
    net = tiny(4).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = MultiLayerExtractor(net, 4)(x)
    assert feats.shape == (2, 4, 4, 128)
    assert torch.allclose(feats[..., -32:], net.tokens(x)[1], atol=1e-6)  # last block = tokens
    third = net.block_tokens(x, [2], norm=True)[0][1]
    assert torch.allclose(feats[..., 64:96], third, atol=1e-6)
    with pytest.raises(ValueError, match="num_blocks"):
        MultiLayerExtractor(net, 5)


def test_bn_head_uses_running_stats_when_scoring():
    head = BNLinearHead(8, 3)
    f = torch.randn(4, 8, 2, 2) * 5 + 3
    head.train()
    head(f, (4, 4))
    head.eval()
    assert head(f, (4, 4)).shape == (4, 3, 4, 4) and head.bn.num_batches_tracked == 1


def test_linear4_protocol_runs_on_scenes(single_thread):
    record = evaluate("linear4", tiny(2), overrides=["data.num_images=12", "epochs=2",
                      "num_blocks=2"], progress=False, verbose=False)  # fmt: skip
    assert record["protocol"] == "linear4" and record["results"]["blocks"] == [0, 1]
    assert record["results"]["feature_dim"] == 64 and 0 <= record["results"]["miou"] <= 1
    assert record["settings"]["head"] == "bn_linear"
    assert MultiLayerProtocol().image_size == 448 and MultiLayerProtocol().num_blocks == 4
