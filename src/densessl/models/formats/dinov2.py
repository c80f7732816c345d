"""Official DINOv2 checkpoints (facebookresearch/dinov2) → timm ``VisionTransformer`` keys.

The hub releases (``dinov2_vits14_pretrain.pth``, ``dinov2_vits14_reg4_pretrain.pth``, …
B/14, L/14) are bare state dicts of ``DinoVisionTransformer``
(facebookresearch/dinov2 @b8931f7, ``dinov2/models/vision_transformer.py``): ``cls_token``,
``pos_embed`` ``[1, 1 + 37*37, D]`` (518-px grid, the CLS slot included), ``register_tokens``
``[1, R, D]`` (reg4 models), ``mask_token`` (iBOT's, unused by a backbone),
``patch_embed.proj.*``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
mlp.fc2, ls2.gamma}.*`` and ``norm.*`` — timm's names, so converting means:

* dropping ``mask_token``;
* with registers, moving to timm's register layout where no prefix token has a position
  (``no_embed_class``): DINOv2 adds ``pos_embed[:, 0]`` to the CLS token and inserts the
  registers after the positions are added, so ``cls_token + pos_embed[:, :1]`` and
  ``pos_embed[:, 1:]`` give the same tokens;
* un-chunking FSDP training checkpoints (``blocks.<chunk>.<i>.``) and picking the teacher or
  student of ``teacher_checkpoint.pth`` / ``model_*.pth`` (:mod:`.network`).

DINOv2 resamples positions with ``interpolate_offset=0.1`` and no antialias
(``interpolate_pos_encoding``), i.e. ``pos_interp="dino"``. SwiGLU blocks (ViT-g/14,
``mlp.w12``/``mlp.w3``) are not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densessl.models.formats.common import Converted
from densessl.models.formats.network import backbone_tensors, network_keys

__all__ = ["dinov2_to_timm", "looks_like", "to_timm"]


def looks_like(obj: Any) -> bool:
    """True for an official DINOv2 backbone (its ``mask_token`` beside a learned table)."""
    keys = network_keys(obj, "teacher") | network_keys(obj, "student")
    return "mask_token" in keys and "pos_embed" in keys and "storage_tokens" not in keys


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """:func:`dinov2_to_timm` as a :class:`Converted` (DINOv2 resamples positions as DINO)."""
    weights = dinov2_to_timm(obj, which)
    registers = int(weights["reg_token"].shape[1]) if "reg_token" in weights else 0
    fields = {"family": "dinov2", "num_registers": registers, "pos_interp": "dino"}
    return Converted("dinov2", weights, fields)


def dinov2_to_timm(obj: Any, which: str = "teacher") -> dict[str, Tensor]:
    """timm ``VisionTransformer`` keys of an official DINOv2 checkpoint.

    Raises:
        ValueError: no DINOv2 backbone in ``obj``, or a SwiGLU (ViT-g) model.
    """
    state = backbone_tensors(obj, which, "pos_embed")
    if any(".mlp.w12." in k for k in state):
        raise ValueError(
            "DINOv2 ViT-g/14 (SwiGLU MLP: mlp.w12/mlp.w3) is not supported; use S/14, B/14 or L/14"
        )
    out = {k: v for k, v in state.items() if k != "mask_token"}
    registers = out.pop("register_tokens", None)
    if registers is not None:
        pos = out["pos_embed"]
        out["reg_token"] = registers
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:].contiguous()
    return {k: torch.as_tensor(v) for k, v in out.items()}
