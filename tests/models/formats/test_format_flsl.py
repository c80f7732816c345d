"""FLSL releases: DINO-style dicts of the CLS-free ViT of ``make_vit_noclass`` (QingSuML/FLSL)."""

from __future__ import annotations

import pytest
import torch

from densessl.io.checkpoint import CheckpointError
from densessl.models.formats.detect import convert, detect_format, read_checkpoint
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig
from helpers import write_flsl

#: The official model on the same seeded weights and input as the SelfPatch test:
#: QingSuML/FLSL @acb5d6f0dcde, ``vision_transformer.py`` ``VisionTransformer(img_size=[32],
#: patch_size=16, embed_dim=32, depth=2, num_heads=2, qkv_bias=True, norm_layer=LayerNorm(
#: eps=1e-6))`` after ``make_vit_noclass(vit)`` (``post_layernorm=True``), ``vit(x)``, on CPU;
#: densessl agrees to 1.8e-8.
OFFICIAL_FIRST = [
    [-0.011921402998268604, -0.007594581227749586, -0.09854570776224136, -0.010510215535759926],
    [-0.011849330738186836, -0.15569917857646942, -0.09906657040119171, -0.06525368243455887],
    [-0.011915265582501888, 0.056496474891901016, -0.11122728884220123, -0.04488343745470047],
]
OFFICIAL_LAST = [
    -0.04804150387644768,
    -0.12973782420158386,
    -0.20952317118644714,
    0.004783145617693663,
]
OFFICIAL_ABS_SUM = 44.19105529785156
#: The tiny ViT of the parity values, with DINO's position resampling (as the official code).
SMALL = BackboneConfig(
    arch="vit_tiny",
    patch_size=16,
    img_size=32,
    depth=2,
    embed_dim=32,
    num_heads=2,
    pos_interp="dino",
)


def test_features_equal_the_official_flsl_vit(tmp_path):
    path = tmp_path / "flsl_vits16.pth"
    write_flsl(path, d=32, depth=2)
    backbone = load_backbone(path, SMALL)
    assert (backbone.config.cls_token, backbone.config.final_norm) == (False, True)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = backbone.tokens(x)[1].flatten(1, 2)
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(OFFICIAL_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(OFFICIAL_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - OFFICIAL_ABS_SUM) < 1e-4


def test_detected_unused_cls_token_dropped(tmp_path):
    path = tmp_path / "checkpoint.pth"
    teacher = write_flsl(path)
    state = read_checkpoint(path)
    assert detect_format(state) == "flsl"
    converted = convert(state, path)
    assert set(converted.weights) == set(teacher) - {"cls_token"}
    assert set(converted.extras) == {"cls_token"}
    assert torch.equal(converted.weights["pos_embed"], teacher["pos_embed"])  # [1, 4, 192]
    backbone = load_backbone(path, which="student")
    assert not backbone.has_cls_token and backbone.config.arch == "vit_tiny"


def test_named_format_that_does_not_fit(tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_flsl(path)
    with pytest.raises(CheckpointError, match=r"--format leopart, but this does not look.*FLSL"):
        load_backbone(path, fmt="leopart")
