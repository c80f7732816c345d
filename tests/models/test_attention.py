"""The blocks' attention kernel switch (densessl.models.attention) and its use by the backbone."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from densessl.config.presets import build_run_config
from densessl.errors import ConfigError
from densessl.methods.base import get_method
from densessl.models.attention import BlockAttention, explicit_attention_wanted, use_block_attention
from densessl.models.vit import BackboneConfig, build_backbone


def tiny(attention: str) -> BackboneConfig:
    return BackboneConfig(
        arch="vit_tiny",
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=8,
        img_size=32,
        attention=attention,
    )


def count_fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_auto_is_explicit_only_for_cpu_inputs_under_autocast():
    x = torch.zeros(1)
    assert not explicit_attention_wanted("auto", x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_attention_wanted("auto", x)
        assert not explicit_attention_wanted("fused", x)
    assert explicit_attention_wanted("explicit", x) and not explicit_attention_wanted("fused", x)


@pytest.mark.parametrize(
    ("mode", "autocast", "fused_calls"),
    [
        ("auto", False, 2),
        ("auto", True, 0),
        ("fused", True, 2),
        ("explicit", False, 0),
    ],
)
def test_the_backbone_runs_the_kernel_its_mode_asks_for(monkeypatch, mode, autocast, fused_calls):
    backbone = build_backbone(tiny(mode))
    calls = count_fused_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        backbone.tokens(torch.randn(2, 3, 32, 32))
    assert calls[0] == fused_calls  # one call per block when fused, none when explicit


def test_explicit_and_fused_give_the_same_tokens_and_gradients():
    torch.manual_seed(0)
    fused = build_backbone(tiny("fused"))
    explicit = build_backbone(tiny("explicit"))
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 3, 40, 24)
    outputs = []
    for backbone in (fused, explicit):
        cls, patches = backbone.tokens(x)
        (cls.square().sum() + patches.sin().sum()).backward()
        outputs.append((cls, patches, [p.grad for p in backbone.parameters()]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-5, atol=1e-5)
    for a, b in zip(outputs[0][2], outputs[1][2], strict=True):
        assert (a - b).norm() <= 2e-4 * a.norm()  # float32 rounding of two summation orders


def test_explicit_under_bf16_stays_close_to_float32():
    torch.manual_seed(0)
    backbone = build_backbone(tiny("explicit"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, reference = backbone.tokens(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, low = backbone.tokens(x)
    assert low.dtype == torch.float32  # the final LayerNorm runs in float32 under autocast
    assert (low - reference).abs().max() < 0.1 * reference.abs().max()


def test_conversion_keeps_timm_weights_keys_and_survives_deepcopy():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        depth=2,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        num_heads=2,
    )
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    use_block_attention(model, "explicit")
    assert list(model.state_dict()) == keys
    teacher = copy.deepcopy(model)
    assert all(type(b.attn) is BlockAttention and b.attn.mode == "explicit" for b in teacher.blocks)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), before, rtol=1e-5, atol=1e-5)


def test_bad_modes_and_modules_are_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        BackboneConfig(attention="flash")
    with pytest.raises(ConfigError, match="attention"):
        build_run_config("dino", get_method("dino").Params, "tiny", ["backbone.attention=flash"])
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1)
    with pytest.raises(ValueError, match="attention must be one of"):
        use_block_attention(model, "sdpa")
    model.blocks[0].attn = torch.nn.Identity()
    with pytest.raises(TypeError, match="block 0 attention is Identity"):
        use_block_attention(model, "auto")
