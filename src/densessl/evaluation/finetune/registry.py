"""The fine-tuning decoders: one record each (``densessl finetune seg --decoder NAME``).

A record names the decoder, its one-line description, the official recipe it follows and how
to build it; ``densessl finetune seg --help`` lists them with the settings. Adding a decoder:
its module, a :class:`DecoderRecord` below and its recipe in
:func:`~densessl.evaluation.finetune.settings.ade20k_recipe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from densessl.errors import ConfigError, brief
from densessl.evaluation.finetune.linear_decoder import LinearDecoder
from densessl.evaluation.finetune.semfpn import SemanticFPN
from densessl.evaluation.finetune.settings import FinetuneSettings

__all__ = ["DecoderRecord", "get_decoder", "list_decoders"]


@dataclass(frozen=True)
class DecoderRecord:
    """A fine-tuning decoder.

    Attributes:
        name: what users type; description: one line; source: the recipe's origin.
        build: ``build(dim, num_classes, patch_size, settings) -> nn.Module``.
        expected: published ADE20K mIoU of ViT-S/16 backbones under this recipe.
    """

    name: str
    description: str
    source: str
    build: Callable[[int, int, int, FinetuneSettings], nn.Module]
    expected: str


_DECODERS = {
    "linear": DecoderRecord(
        name="linear",
        description="Segmenter linear decoder (LOCA's ADE20K protocol): SGD lr 1e-3, poly "
        "0.9, 160k it, batch 8, 512 crops, sliding window 512/512",
        source="rstrudel/segmenter @20d1bfa, segm/config.yml + segm/train.py",
        build=lambda dim, c, p, s: LinearDecoder(dim, c),
        expected="LOCA ViT-S/16 44.8, ViT-B/16 48.0 (google-research/scenic LOCA README)",
    ),
    "semfpn": DecoderRecord(
        name="semfpn",
        description="SelfPatch Semantic FPN on blocks 2/5/8/11: AdamW lr 6e-5, wd 0.01, "
        "1,500 warm-up, poly, 40k it, batch 16, 512 crops, whole-image test",
        source="alinlab/SelfPatch @81aef14, segmentation/configs/"
        "semfpn_vit-s16_512x512_40k_ade20k.py",
        build=lambda dim, c, p, s: SemanticFPN(
            dim, c, p, s.pyramid, s.fpn_channels, s.head_channels, s.dropout
        ),
        expected="DINO ViT-S/16 38.3, SelfPatch ViT-S/16 41.2 (SelfPatch segmentation/README.md)",
    ),
}


def list_decoders() -> dict[str, DecoderRecord]:
    """Every decoder by name."""
    return dict(_DECODERS)


def get_decoder(name: str) -> DecoderRecord:
    """The record of ``name``.

    Raises:
        ConfigError: unknown name (lists the known ones).
    """
    if name not in _DECODERS:
        raise ConfigError(f"unknown decoder {brief(name)}; choose one of {', '.join(_DECODERS)}")
    return _DECODERS[name]
