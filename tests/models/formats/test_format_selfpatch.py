"""SelfPatch releases: a CLS-free, norm-free ViT with SelfPatch's heads (alinlab/SelfPatch)."""

from __future__ import annotations

import pytest
import torch

from densessl.io.checkpoint import CheckpointError
from densessl.models.formats import selfpatch
from densessl.models.formats.detect import convert, detect_format, read_checkpoint
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig
from helpers import write_selfpatch

#: The official model on the same seeded weights (32-d, 2 blocks, 2 heads, patch 16, grid 2x2)
#: and input (``randn(2, 3, 48, 64)``, seed 1; 3x4 patches, positions resampled):
#: alinlab/SelfPatch @81aef149fa98, ``selfpatch_vision_transformer.py`` ``VisionTransformer(
#: img_size=[32], patch_size=16, embed_dim=32, depth=2, num_heads=2, qkv_bias=True,
#: norm_layer=LayerNorm(eps=1e-6)).get_intermediate_layers(x, n=1)[0]`` (as its
#: ``eval_video_segmentation.py``), run on CPU; densessl agrees to 2.4e-7.
OFFICIAL_FIRST = [
    [0.44974055886268616, 0.4970768988132477, 0.3600682318210602, -2.2553646564483643],
    [-3.249056577682495, -0.3541090786457062, -1.071006178855896, 0.4943654239177704],
    [-0.33997467160224915, -0.6260238289833069, 1.520042896270752, -2.007560968399048],
]
OFFICIAL_LAST = [-0.7130514979362488, 0.5000991225242615, 1.331224799156189, -0.6794097423553467]
OFFICIAL_ABS_SUM = 877.417724609375
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


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))


def test_features_equal_the_official_selfpatch_vit(tmp_path):
    path = tmp_path / "selfpatch_vits16.pth"
    write_selfpatch(path, d=32, depth=2)
    backbone = load_backbone(path, SMALL)
    config = backbone.config
    assert (config.cls_token, config.final_norm, config.pos_interp) == (False, False, "dino")
    with torch.no_grad():
        f = backbone.tokens(_input())[1].flatten(1, 2)  # [2, 12, 32]
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(OFFICIAL_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(OFFICIAL_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - OFFICIAL_ABS_SUM) < 1e-3


def test_detected_teacher_by_default_heads_kept_apart(tmp_path):
    path = tmp_path / "checkpoint.pth"
    teacher = write_selfpatch(path)
    state = read_checkpoint(path)
    assert detect_format(state) == "selfpatch"
    converted = convert(state, path)
    assert set(converted.weights) == set(teacher)  # no ca_head / c_head / p_head
    assert all(torch.equal(converted.weights[k], v) for k, v in teacher.items())
    assert set(converted.extras) == {k for k in state["teacher"] if k.startswith("ca_head.")}
    student = convert(state, path, which="student").weights
    assert not torch.equal(student["pos_embed"], teacher["pos_embed"])
    backbone = load_backbone(path)  # 192-d: vit_tiny inferred
    assert backbone.config.arch == "vit_tiny" and not backbone.has_cls_token
    assert "norm.weight" not in backbone.model.state_dict()


def test_partial_or_wrong_files_name_the_format(tmp_path):
    path = tmp_path / "partial.pth"
    teacher = write_selfpatch(path)
    state = read_checkpoint(path)
    del state["teacher"]["backbone.blocks.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"partial\.pth: looks like a SelfPatch.*missing"):
        convert(state, path)
    with pytest.raises(ValueError, match="has a cls_token"):
        selfpatch.to_timm(
            {**teacher, "cls_token": torch.zeros(1, 1, 192), "ca_head.norm.weight": torch.ones(3)}
        )
