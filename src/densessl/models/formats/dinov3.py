"""Official DINOv3 checkpoints (facebookresearch/dinov3) → timm ``Eva`` keys.

The hub releases (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``, ViT-B/16, ViT-L/16) are
state dicts of ``DinoVisionTransformer`` (facebookresearch/dinov3 @6876159,
``dinov3/models/vision_transformer.py``, ``dinov3/hub/backbones.py``): ``cls_token``,
``storage_tokens`` ``[1, 4, D]`` (registers), ``mask_token``, ``rope_embed.periods``
(``base ** (2 i / (head_dim / 2))``, base 100), ``patch_embed.proj.*``,
``blocks.N.{norm1, attn.qkv.{weight,bias,bias_mask}, attn.proj, ls1.gamma, norm2, mlp.fc1,
mlp.fc2, ls2.gamma}`` and ``norm.*``. timm's ``vit_*_patch16_dinov3_qkvb`` holds the same
network under other names:

* ``storage_tokens`` → ``reg_token``; ``ls{1,2}.gamma`` → ``gamma_{1,2}``;
* the fused ``attn.qkv.bias`` (its key third is masked to 0 by ``bias_mask``,
  ``mask_k_bias=True``) → ``attn.q_bias`` and ``attn.v_bias`` (timm keeps ``k_bias`` at 0);
* ``mask_token``, ``bias_mask`` and ``rope_embed.periods`` are dropped; the periods are
  checked against base 100 (timm's ``rope_temperature=100``) first, so a model trained with
  other RoPE periods is refused rather than silently changed.

DINOv3 pretraining rescales the RoPE coordinates at random (``rescale_coords=2``, training
only); densessl's post-training keeps them fixed (timm's default), evaluation is unaffected.
Untied CLS norms (``cls_norm``, ``local_cls_norm``: the 7B model) are not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densessl.models.formats.common import Converted
from densessl.models.formats.network import backbone_tensors, network_keys

__all__ = ["dinov3_to_timm", "looks_like", "rope_periods", "to_timm"]

ROPE_BASE = 100.0


def looks_like(obj: Any) -> bool:
    """True for an official DINOv3 backbone (``storage_tokens`` or ``rope_embed.periods``)."""
    keys = network_keys(obj, "teacher") | network_keys(obj, "student")
    return "rope_embed.periods" in keys or "storage_tokens" in keys


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """:func:`dinov3_to_timm` as a :class:`Converted`."""
    weights = dinov3_to_timm(obj, which)
    registers = int(weights["reg_token"].shape[1]) if "reg_token" in weights else 0
    return Converted("dinov3", weights, {"family": "dinov3", "num_registers": registers})


def rope_periods(head_dim: int, base: float = ROPE_BASE) -> Tensor:
    """DINOv3's RoPE periods ``base ** (2 i / (head_dim / 2))``, ``i < head_dim / 4``."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))


def dinov3_to_timm(obj: Any, which: str = "teacher") -> dict[str, Tensor]:
    """timm ``Eva`` keys of an official DINOv3 checkpoint.

    Raises:
        ValueError: no DINOv3 backbone in ``obj``, RoPE periods other than base 100, untied
            CLS norms, or a k bias that is not masked to zero.
    """
    state = backbone_tensors(obj, which, "patch_embed.proj.weight")
    if any(k.startswith(("cls_norm.", "local_cls_norm.")) for k in state):
        raise ValueError("DINOv3 models with untied CLS norms (cls_norm, the 7B) are not supported")
    periods = state.get("rope_embed.periods")
    if periods is not None:
        expected = rope_periods(4 * periods.numel())
        if not torch.allclose(periods.double(), expected, rtol=1e-4):
            raise ValueError(
                f"rope_embed.periods {periods[:4].tolist()}... are not DINOv3's base-100 "
                f"periods {expected[:4].tolist()}...; this RoPE variant is not supported"
            )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in ("mask_token", "rope_embed.periods") or key.endswith(".bias_mask"):
            continue
        if key.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3, dim=-1)
            mask = state.get(key.replace(".bias", ".bias_mask"))
            if mask is not None:
                k = k * mask.chunk(3, dim=-1)[1]
            if k.abs().max() > 0:
                raise ValueError(f"{key}: the key bias is not masked to zero (mask_k_bias=False)")
            out[key.replace("qkv.bias", "q_bias")] = q
            out[key.replace("qkv.bias", "v_bias")] = v
            continue
        key = key.replace("storage_tokens", "reg_token")
        key = key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        out[key] = value
    return out
