"""Segmenter's linear decoder (Strudel et al., ICCV 2021; rstrudel/segmenter @20d1bfa,
``segm/model/decoder.py`` ``DecoderLinear``).

The final (LayerNorm-ed) patch tokens go through one ``Linear(D, C)`` each; the class map on
the patch grid is upsampled bilinearly to the input by :class:`SegmentationModel`. The
weight is drawn from a truncated normal (std 0.02), the bias starts at 0
(``segm/model/utils.py`` ``init_weights``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LinearDecoder"]


class LinearDecoder(nn.Module):
    """Patch tokens ``[B, D, h, w]`` (one map) -> class logits ``[B, C, h, w]``.

    Args:
        in_channels: token width ``D``.
        num_classes: ``C``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        """``maps``: one ``[B, D, h, w]`` map -> ``[B, C, h, w]``."""
        (x,) = maps
        return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
