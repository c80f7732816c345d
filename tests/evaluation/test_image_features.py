"""Image-level features (CLS, last blocks, LOST's keys) on every backbone family."""

from __future__ import annotations

import pytest
import torch

from densessl.evaluation.features import PatchFeatureExtractor
from densessl.evaluation.image_features import image_features, last_block_keys, last_blocks_cls
from densessl.models.vit import BackboneConfig, build_backbone

FAMILIES = {"vit": (8, None), "dinov2_reg": (14, 4), "dinov3": (16, 4)}


def _extractor(family: str) -> tuple[PatchFeatureExtractor, int]:
    patch, registers = FAMILIES[family]
    config = BackboneConfig(
        arch="vit_tiny", family=family.removesuffix("_reg"), patch_size=patch,
        img_size=4 * patch, depth=2, embed_dim=32, num_heads=2, num_registers=registers,
    )  # fmt: skip
    torch.manual_seed(0)
    return PatchFeatureExtractor(build_backbone(config).eval(), patch, {}), patch


@pytest.mark.parametrize("family", list(FAMILIES))
def test_image_level_features_skip_the_registers(family):
    extractor, patch = _extractor(family)
    backbone = extractor.model
    x = torch.randn(2, 3, 3 * patch, 4 * patch)
    with torch.no_grad():
        cls, patches = backbone.tokens(x)
        tokens = backbone.model.forward_features(x)
    pooled, how = image_features(extractor, x)
    assert how == "cls"
    torch.testing.assert_close(pooled, cls, rtol=0, atol=1e-6)
    two = last_blocks_cls(extractor, x, n=2)
    assert two.shape == (2, 64)
    torch.testing.assert_close(two[:, 32:], cls, rtol=0, atol=1e-6)
    keys = last_block_keys(extractor, x)
    assert keys.shape == (2, 12, 32)
    # The key projection of the last block's normed input (patches only, no rotation).
    block = backbone.model.blocks[-1]
    captured = []
    hook = block.norm1.register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.no_grad():
        backbone.tokens(x)
    hook.remove()
    prefix = backbone.num_prefix_tokens
    attn = block.attn
    dim = attn.num_heads * attn.head_dim
    bias = attn.qkv.bias[dim : 2 * dim] if attn.qkv.bias is not None else attn.k_bias
    expected = captured[0][:, prefix:] @ attn.qkv.weight[dim : 2 * dim].T + bias
    torch.testing.assert_close(keys, expected, rtol=0, atol=1e-5)
    assert patches.shape[1:3] == (3, 4) and tokens.shape[1] == prefix + 12
