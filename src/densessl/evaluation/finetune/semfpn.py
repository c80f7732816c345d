"""Semantic FPN on ViT blocks in plain PyTorch (Kirillov et al., CVPR 2019), as SelfPatch
fine-tunes it on ADE20K (alinlab/SelfPatch @81aef14,
``segmentation/configs/semfpn_vit-s16_512x512_40k_ade20k.py``) with mmseg's ``FPN`` neck
and ``FPNHead`` (open-mmlab/mmsegmentation 0.x, ``mmseg/models/necks/fpn.py``,
``mmseg/models/decode_heads/fpn_head.py``).

* Inputs: four ``[B, D, h, w]`` maps (blocks 2/5/8/11). SelfPatch's segmentation backbone
  (``segmentation/backbones/vit_SelfPatch.py``) hands them over **all at the patch stride**
  (``pyramid="none"``, the default); ``pyramid="simple"`` first turns them into strides
  4/8/16/32 with the deconv / max-pool pyramid of SelfPatch's detection backbone
  (``detection/backbone/vit_SelfPatch.py`` ``fpn1``-``fpn4``, from XCiT; SyncBN -> BN).
* FPN neck: 1x1 lateral convs to 256, top-down nearest upsampling + sum, 3x3 output convs;
  no norm, no activation; Xavier-uniform init (``num_outs=4``).
* FPNHead: per level ``max(1, log2(stride / 4))`` 3x3 conv-BN-ReLU (128 ch) stages, each
  followed by a x2 bilinear upsample unless the level's declared stride is 4 (the config
  declares ``feature_strides=[4, 8, 16, 32]`` whatever the real strides are); the levels are
  resized (bilinear) to level 0 and summed; dropout 0.1 and a 1x1 classifier
  (normal std 0.01 init).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPNHead", "FPNNeck", "SemanticFPN", "SimplePyramid"]

STRIDES = (4, 8, 16, 32)


class SimplePyramid(nn.Module):
    """Four same-stride ViT maps -> strides 4/8/16/32 (patch 16) or 4/8/16/32 (patch 8).

    Patch 16: deconv-BN-GELU-deconv, deconv, identity, max-pool 2; patch 8: deconv,
    identity, max-pool 2, max-pool 4 (SelfPatch's detection backbone).
    """

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()

        def up() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)

        if patch_size == 16:
            self.levels = nn.ModuleList([
                nn.Sequential(up(), nn.BatchNorm2d(dim), nn.GELU(), up()),
                up(), nn.Identity(), nn.MaxPool2d(2, 2),
            ])  # fmt: skip
        elif patch_size == 8:
            self.levels = nn.ModuleList(
                [up(), nn.Identity(), nn.MaxPool2d(2, 2), nn.MaxPool2d(4, 4)]
            )
        else:
            raise ValueError(f"pyramid=simple needs patch size 8 or 16, got {patch_size}")

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [level(x) for level, x in zip(self.levels, maps, strict=True)]


class FPNNeck(nn.Module):
    """mmseg ``FPN`` (no norm / activation, no extra levels): ``[B, D_i, h_i, w_i]`` x 4 ->
    ``[B, channels, h_i, w_i]`` x 4."""

    def __init__(self, in_channels: list[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, maps, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            top = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + top
        return [conv(x) for conv, x in zip(self.output, laterals, strict=True)]


class FPNHead(nn.Module):
    """mmseg ``FPNHead``: per-level conv-BN-ReLU (+ x2 upsample) stages, sum, classifier."""

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in STRIDES:
            stages: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(STRIDES[0])))):
                conv = nn.Conv2d(
                    in_channels if k == 0 else channels, channels, 3, padding=1, bias=False
                )
                stages += [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                if stride != STRIDES[0]:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*stages))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        out = self.scale_heads[0](maps[0])
        for head, x in zip(self.scale_heads[1:], maps[1:], strict=True):
            y = head(x)
            out = out + F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    """Four ViT maps ``[B, D, h, w]`` -> logits ``[B, C, h', w']`` (level-0 resolution).

    Args:
        in_channels: token width ``D``.
        num_classes: ``C``.
        patch_size: the backbone's (``pyramid="simple"`` needs 8 or 16).
        pyramid: ``none`` or ``simple`` (module docstring).
        fpn_channels / head_channels / dropout: neck width, head width, classifier dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        pyramid: str = "none",
        fpn_channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        simple = pyramid == "simple"
        self.pyramid = SimplePyramid(in_channels, patch_size) if simple else None
        self.neck = FPNNeck([in_channels] * 4, fpn_channels)
        self.head = FPNHead(fpn_channels, head_channels, num_classes, dropout)

    def forward(self, maps: list[Tensor]) -> Tensor:
        if self.pyramid is not None:
            maps = self.pyramid(maps)
        return self.head(self.neck(maps))
