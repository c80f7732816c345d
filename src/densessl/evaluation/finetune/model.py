"""Backbone + decoder for fine-tuning, its parameter groups and its stochastic depth.

:class:`SegmentationModel` reads the tapped blocks of a
:class:`~densessl.models.vit.ViTBackbone` (``block_tokens``), hands them to the decoder as
``[B, D, h, w]`` maps and upsamples the logits bilinearly to the input (Segmenter's
``F.interpolate(masks, size=(H, W), mode="bilinear")``; mmseg's ``resize`` of the decode
head's output to the label size before the loss). Inputs are zero-padded at the bottom and
right to a multiple of the patch size and the logits cropped back (Segmenter's
``padding`` / ``unpadding``).

:func:`param_groups` gives no weight decay to position embeddings, CLS / register tokens
and every parameter whose name contains ``norm`` (SelfPatch's ``paramwise_cfg``); with
``layer_decay < 1`` each group's lr is scaled BEiT-style by ``decay^(depth + 1 - layer)``
(embeddings layer 0, block ``i`` layer ``i + 1``, final norm and decoder ``depth + 1``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from densessl.models.vit import ViTBackbone

__all__ = ["SegmentationModel", "param_groups", "set_drop_path"]

NO_DECAY = ("pos_embed", "cls_token", "reg_token", "norm")


class SegmentationModel(nn.Module):
    """``images [B, 3, H, W]`` -> logits ``[B, C, H, W]``.

    Args:
        backbone: the ViT (trained too).
        decoder: takes ``list`` of ``[B, D, h, w]`` maps, one per tapped block.
        blocks: 0-based tapped blocks; norm: apply the final LayerNorm to them.
    """

    def __init__(
        self, backbone: ViTBackbone, decoder: nn.Module, blocks: list[int], norm: bool
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.blocks = list(blocks)
        self.norm = bool(norm)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        p = self.backbone.patch_size
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        outs = self.backbone.block_tokens(images, self.blocks, norm=self.norm)
        maps = [patches.permute(0, 3, 1, 2) for _, patches in outs]
        logits = self.decoder(maps)
        size = images.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits[..., :height, :width]


def set_drop_path(backbone: ViTBackbone, rate: float) -> None:
    """Stochastic depth rising linearly from 0 (first block) to ``rate`` (last block)."""
    blocks = list(backbone.model.blocks)
    rates = torch.linspace(0, rate, len(blocks)).tolist()
    for block, r in zip(blocks, rates, strict=True):
        for name in ("drop_path1", "drop_path2", "drop_path"):
            if hasattr(block, name):
                setattr(block, name, DropPath(r) if r > 0 else nn.Identity())


def _layer_of(name: str, depth: int) -> int:
    if not name.startswith("backbone."):
        return depth + 1
    rest = name[len("backbone.model.") :]
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    if rest.startswith(("patch_embed", "pos_embed", "cls_token", "reg_token", "rope")):
        return 0
    return depth + 1


def param_groups(
    model: SegmentationModel, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict[str, Any]]:
    """Optimiser groups; each holds ``lr_scale`` (multiplied into the schedule's lr)."""
    depth = len(model.backbone.model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = any(key in name for key in NO_DECAY)
        layer = _layer_of(name, depth) if layer_decay < 1 else depth + 1
        key = (layer, plain)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if plain else weight_decay,
                "lr": lr * scale,
                "lr_scale": scale,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
