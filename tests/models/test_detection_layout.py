"""``densessl export --to detectron2|mmdet``: the key layouts those codebases' ViTs load.

The expected names and shapes are pinned by hand from the official code (neither codebase is
imported): facebookresearch/detectron2 @0818132 ``detectron2/modeling/backbone/vit.py``
(``ViT``: ``patch_embed.proj``, ``pos_embed [1, 1 + (pretrain_img_size / p)^2, D]`` with
``pretrain_use_cls_token=True``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``; wrapped as ``backbone.net`` by ``SimpleFeaturePyramid``), and alinlab/SelfPatch
@81aef14 ``detection/backbone/vit_SelfPatch.py`` (``SelfPatch_ViT``: ``pos_embed
[1, (img_size / p)^2, D]``, no CLS token; ``backbone`` of mmdet's ``MaskRCNN``).
"""

from __future__ import annotations

import json

import pytest
import torch

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.export import export_detection
from densessl.models.detection_layout import detection_state_dict
from densessl.models.vit import BackboneConfig, build_backbone

D, DEPTH, P, IMG = 32, 2, 8, 64


def official_vit_shapes(prefix: str, with_cls_slot: bool) -> dict[str, tuple[int, ...]]:
    """The official ViT's backbone parameters (names + shapes) for D=32, depth 2, p 8, 64 px."""
    n = (IMG // P) ** 2
    shapes = {
        f"{prefix}patch_embed.proj.weight": (D, 3, P, P),
        f"{prefix}patch_embed.proj.bias": (D,),
        f"{prefix}pos_embed": (1, n + 1 if with_cls_slot else n, D),
    }
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        shapes.update({
            b + "norm1.weight": (D,), b + "norm1.bias": (D,),
            b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "norm2.weight": (D,), b + "norm2.bias": (D,),
            b + "mlp.fc1.weight": (4 * D, D), b + "mlp.fc1.bias": (4 * D,),
            b + "mlp.fc2.weight": (D, 4 * D), b + "mlp.fc2.bias": (D,),
        })  # fmt: skip
    return shapes


def backbone(**kw):
    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_tiny", patch_size=P, img_size=IMG, depth=DEPTH,
                            embed_dim=D, num_heads=2, **kw)  # fmt: skip
    return build_backbone(config)


TARGETS = [("detectron2", "backbone.net.", True), ("mmdet", "backbone.", False)]


@pytest.mark.parametrize(("to", "prefix", "cls_slot"), TARGETS)
def test_keys_and_shapes_match_the_official_vit(to, prefix, cls_slot):
    net = backbone()
    state = detection_state_dict(net, to)
    assert {k: tuple(v.shape) for k, v in state.items()} == official_vit_shapes(prefix, cls_slot)
    timm_state = net.model.state_dict()
    assert torch.equal(
        state[prefix + "blocks.1.attn.qkv.weight"], timm_state["blocks.1.attn.qkv.weight"]
    )
    pos = timm_state["pos_embed"]
    assert torch.equal(state[prefix + "pos_embed"], pos if cls_slot else pos[:, 1:])


def test_no_cls_backbone_gets_a_zero_cls_slot_for_detectron2():
    net = backbone(cls_token=False)
    pos = detection_state_dict(net, "detectron2")["backbone.net.pos_embed"]
    assert pos.shape == (1, 1 + (IMG // P) ** 2, D) and not pos[:, 0].any()
    assert torch.equal(pos[:, 1:], net.model.state_dict()["pos_embed"])


def test_export_files_recipe_and_refusals(tmp_path, capsys):
    out = export_detection(backbone(), tmp_path / "d2", "detectron2")
    saved = torch.load(out / "detectron2.pth", weights_only=True)
    assert set(saved) == {"model"} and "backbone.net.pos_embed" in saved["model"]
    recipe = json.loads((out / "detection.json").read_text())
    assert "model.backbone.net.pretrain_img_size=64" in recipe["overrides"]
    out = export_detection(backbone(), tmp_path / "mm", "mmdet")
    saved = torch.load(out / "mmdet.pth", weights_only=True)
    assert "backbone.blocks.0.norm1.weight" in saved["state_dict"]
    assert any(
        o.startswith("load_from=")
        for o in json.loads((out / "detection.json").read_text())["overrides"]
    )
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="did not write"):
        export_detection(backbone(), tmp_path / "user", "mmdet")
    with pytest.raises(ConfigError, match="layer scale"):
        export_detection(backbone(family="dinov2", num_registers=0), tmp_path / "v2", "mmdet")


def test_cli_export_to_detectron2(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "e"), "--to", "detectron2"]) == 0
    assert "train.init_checkpoint=" in capsys.readouterr().out
