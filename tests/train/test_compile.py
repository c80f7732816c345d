"""Speed options: activation checkpointing changes no number; compile keeps the state dict."""

from __future__ import annotations

import torch

from densessl.models.vit import BackboneConfig, build_backbone
from densessl.train.compile import compile_backbones

TINY = {"arch": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 2, "embed_dim": 32}


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_backbone(BackboneConfig(**TINY, num_heads=2))
    checkpointed = build_backbone(BackboneConfig(**TINY, num_heads=2, grad_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.model.grad_checkpointing and not plain.model.grad_checkpointing
    x = torch.randn(2, 3, 32, 32)
    for net in (plain, checkpointed):
        net.tokens(x)[1].square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_compile_is_in_place_and_keeps_parameter_names():
    net = build_backbone(BackboneConfig(**TINY, num_heads=2))
    names = list(net.state_dict())
    assert compile_backbones(torch.nn.ModuleDict({"student": net})) == 2
    assert list(net.state_dict()) == names
    assert all(block._compiled_call_impl is not None for block in net.model.blocks)
