"""Small checkpoints in the official DINOv2 / DINOv3 layouts, written by the tests.

The key names and shapes are those of ``DinoVisionTransformer`` in facebookresearch/dinov2
@b8931f7 (``dinov2/models/vision_transformer.py``) and facebookresearch/dinov3 @6876159
(``dinov3/models/vision_transformer.py``, ``LinearKMaskedBias``, ``RopePositionEmbedding``);
``tests/fixtures/make_official_families.py`` checked them against the official modules'
``state_dict()`` and recorded the official models' outputs on these very weights.

Weights are seeded normal draws (not an init), so layer scale, biases and norms all matter.
"""

from __future__ import annotations

import torch

DIM, DEPTH, HEADS = 64, 2, 2


def _block_keys(i: int, dim: int, dinov3: bool) -> list[tuple[str, tuple[int, ...]]]:
    keys = [
        (f"blocks.{i}.norm1.weight", (dim,)),
        (f"blocks.{i}.norm1.bias", (dim,)),
        (f"blocks.{i}.attn.qkv.weight", (3 * dim, dim)),
        (f"blocks.{i}.attn.qkv.bias", (3 * dim,)),
    ]
    if dinov3:
        keys.append((f"blocks.{i}.attn.qkv.bias_mask", (3 * dim,)))
    keys += [
        (f"blocks.{i}.attn.proj.weight", (dim, dim)),
        (f"blocks.{i}.attn.proj.bias", (dim,)),
        (f"blocks.{i}.ls1.gamma", (dim,)),
        (f"blocks.{i}.norm2.weight", (dim,)),
        (f"blocks.{i}.norm2.bias", (dim,)),
        (f"blocks.{i}.mlp.fc1.weight", (4 * dim, dim)),
        (f"blocks.{i}.mlp.fc1.bias", (4 * dim,)),
        (f"blocks.{i}.mlp.fc2.weight", (dim, 4 * dim)),
        (f"blocks.{i}.mlp.fc2.bias", (dim,)),
        (f"blocks.{i}.ls2.gamma", (dim,)),
    ]
    return keys


def dinov2_keys(registers: int, grid: int = 4, patch: int = 14) -> list[tuple[str, tuple]]:
    """Official DINOv2 backbone keys and shapes (``pos_embed`` with the CLS slot)."""
    keys: list[tuple[str, tuple]] = [
        ("cls_token", (1, 1, DIM)),
        ("pos_embed", (1, 1 + grid * grid, DIM)),
    ]
    if registers:
        keys.append(("register_tokens", (1, registers, DIM)))
    keys += [
        ("mask_token", (1, DIM)),
        ("patch_embed.proj.weight", (DIM, 3, patch, patch)),
        ("patch_embed.proj.bias", (DIM,)),
    ]
    for i in range(DEPTH):
        keys += _block_keys(i, DIM, dinov3=False)
    return [*keys, ("norm.weight", (DIM,)), ("norm.bias", (DIM,))]


def dinov3_keys(registers: int = 4, patch: int = 16) -> list[tuple[str, tuple]]:
    """Official DINOv3 backbone keys and shapes (no position table; RoPE periods)."""
    keys: list[tuple[str, tuple]] = [
        ("cls_token", (1, 1, DIM)),
        ("storage_tokens", (1, registers, DIM)),
        ("mask_token", (1, DIM)),
        ("patch_embed.proj.weight", (DIM, 3, patch, patch)),
        ("patch_embed.proj.bias", (DIM,)),
        ("rope_embed.periods", (DIM // HEADS // 4,)),
    ]
    for i in range(DEPTH):
        keys += _block_keys(i, DIM, dinov3=True)
    return [*keys, ("norm.weight", (DIM,)), ("norm.bias", (DIM,))]


def seeded_state(keys: list[tuple[str, tuple]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights for ``keys`` (norm scales near 1, DINOv3's buffers exact)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in keys:
        value = torch.randn(shape, generator=gen) * 0.2
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            value = 1.0 + value
        if name.endswith("bias_mask"):
            value = torch.ones(shape)
            value[shape[0] // 3 : 2 * shape[0] // 3] = 0.0
        if name == "rope_embed.periods":
            head = 4 * shape[0]
            value = 100.0 ** (2 * torch.arange(shape[0], dtype=torch.float32) / (head // 2))
        state[name] = value
    return state


def images(seed: int = 1, size: tuple[int, int] = (70, 42)) -> torch.Tensor:
    """Two seeded input images ``[2, 3, H, W]``."""
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
