"""The frozen-backbone extractor every protocol reads: ``images -> patches [B, h, w, D]``.

:mod:`densessl.evaluation.features` builds one from any ``--backbone`` source.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from densessl.config.schema import to_plain
from densessl.models.vit import ViTBackbone, describe_config

__all__ = ["PatchFeatureExtractor", "wrap_backbone"]


class PatchFeatureExtractor(nn.Module):
    """A frozen backbone as an evaluation extractor: ``images -> patches [B, h, w, D]``.

    Args:
        model: a :class:`~densessl.models.vit.ViTBackbone` or a timm model (``forward_features``
            giving ``[B, prefix + h*w, D]`` tokens or ``[B, D, h, w]`` maps).
        patch_size: pixels per output token (side); inputs must be multiples of it.
        source: where the weights came from (JSON-friendly; ``"description"`` is a one-liner).

    The module is always in eval mode (``train()`` is ignored), its parameters do not require
    gradients and :meth:`forward` runs under ``no_grad``.
    """

    def __init__(self, model: nn.Module, patch_size: int, source: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.patch_size = int(patch_size)
        self.source = source
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> PatchFeatureExtractor:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def description(self) -> str:
        return str(self.source.get("description", self.source.get("kind", "backbone")))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``images [B, 3, H, W]`` (moved to the module's device) → ``patches [B, h, w, D]``."""
        if isinstance(self.model, ViTBackbone):
            return self.model.tokens(images)[1]
        first = next(self.model.parameters())
        images = images.to(device=first.device, dtype=first.dtype)
        out = self.model.forward_features(images)
        if out.ndim == 4:  # convolutional maps [B, D, h, w]
            return out.permute(0, 2, 3, 1)
        height, width = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        patches = out[:, prefix:]
        if patches.shape[1] != height * width:
            raise ValueError(
                f"{self.description}: {patches.shape[1]} patch tokens for a "
                f"{images.shape[-2]}x{images.shape[-1]} input; expected {height}x{width} "
                f"(patch size {self.patch_size}); use input sides that are multiples of it"
            )
        return patches.reshape(out.shape[0], height, width, out.shape[-1])


def wrap_backbone(
    backbone: ViTBackbone, source: dict[str, Any], what: str
) -> PatchFeatureExtractor:
    """An extractor for ``backbone``; ``source`` gains its architecture and a description."""
    config = backbone.config
    source = {
        **source,
        "backbone": describe_config(config),
        "config": to_plain(config),
        "description": f"{what}: {describe_config(config)}",
    }
    return PatchFeatureExtractor(backbone, config.patch_size, source)
