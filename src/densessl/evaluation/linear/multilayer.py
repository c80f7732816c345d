"""DINOv2's multi-layer linear probe: the last 4 blocks concatenated, BatchNorm, a 1x1 conv.

DINOv2 (Oquab et al., 2023, Sec. 7.3 "Semantic segmentation") reports two frozen linear
protocols on ADE20K / VOC: *lin.* (a linear layer on the last block's patch tokens) and
*+ms* (the patch tokens of the **last 4 blocks concatenated**, larger inputs, multi-scale
test); the released heads are mmseg ``BNHead`` s: BatchNorm over the concatenation, then a
1x1 classifier (facebookresearch/dinov2 @b8931f7,
``dinov2/eval/segmentation/models/decode_heads/linear_head.py``, ``input_transform=
"resize_concat"``), on ``get_intermediate_layers(..., norm=True)`` outputs (the final
LayerNorm applied to each block). Users compare densessl numbers with these; the last-block
1x1 probe of Leopart (``linear``) and this one differ by several mIoU on ADE20K.

Protocol ``linear4`` (:class:`MultiLayerProtocol`): Leopart's probe pipeline and training
recipe (:mod:`densessl.evaluation.linear.probe`: crops, SGD, epochs, dataset-level mIoU)
with DINOv2's features and head: ``num_blocks`` last blocks (default 4), each with the final
norm, concatenated (``[B, h, w, num_blocks * D]``), ``head="bn_linear"``, at 448 px
(``image_size=512`` for DINOv2's 512 crops). What is **not** DINOv2's: its mmseg training
schedule (40k iterations, AdamW) and its multi-scale test, which the released configs
(downloaded from dl.fbaipublicfiles.com, not in the repository) set and which we could not
check; the result names the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from densessl.evaluation.checks import is_int
from densessl.evaluation.linear.probe import LinearProtocol, describe_linear, train_linear_probe
from densessl.models.vit import ViTBackbone

__all__ = ["MultiLayerExtractor", "MultiLayerProtocol", "train_multilayer_probe"]


@dataclass
class MultiLayerProtocol(LinearProtocol):
    """:class:`LinearProtocol` with DINOv2's multi-layer features and BN head.

    Attributes:
        num_blocks: how many last blocks are concatenated (DINOv2: 4).
        (the others: :class:`LinearProtocol`; ``head`` defaults to ``"bn_linear"``).
    """

    head: str = "bn_linear"
    num_blocks: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("num_blocks", is_int(self.num_blocks, 1), "an integer >= 1")


class MultiLayerExtractor(nn.Module):
    """Frozen ``images -> [B, h, w, num_blocks * D]``: the last blocks' normed patch tokens.

    Args:
        backbone: a :class:`ViTBackbone`.
        num_blocks: blocks taken from the end (more than the depth is an error).
    """

    def __init__(self, backbone: ViTBackbone, num_blocks: int) -> None:
        super().__init__()
        depth = len(backbone.model.blocks)
        if num_blocks > depth:
            raise ValueError(
                f"linear4: num_blocks={num_blocks} but the backbone has {depth} blocks"
            )
        self.backbone = backbone
        self.blocks = list(range(depth - num_blocks, depth))
        self.patch_size = backbone.patch_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> MultiLayerExtractor:
        """Frozen: stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        outs = self.backbone.block_tokens(images, self.blocks, norm=True)
        return torch.cat([patches for _, patches in outs], dim=-1)


def _backbone_of(extractor: Any) -> ViTBackbone:
    for candidate in (extractor, getattr(extractor, "model", None)):
        if isinstance(candidate, ViTBackbone):
            return candidate
    raise ValueError("linear4 needs a densessl ViT backbone (it reads intermediate blocks)")


def train_multilayer_probe(
    extractor: Any,
    train_set: Dataset,
    val_set: Dataset,
    protocol: MultiLayerProtocol | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score the multi-layer probe (:func:`train_linear_probe` on
    :class:`MultiLayerExtractor` features); same result keys plus ``blocks``."""
    protocol = protocol or MultiLayerProtocol()
    multi = MultiLayerExtractor(_backbone_of(extractor), protocol.num_blocks)
    out = train_linear_probe(multi, train_set, val_set, protocol, device, progress)
    out["blocks"] = multi.blocks
    return out


def describe_multilayer(p: MultiLayerProtocol) -> str:
    """The settings in one line."""
    return f"last {p.num_blocks} blocks concatenated; " + describe_linear(p)
