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


#: SelfPatch's own mmdet ViT (alinlab/SelfPatch @81aef14, detection/backbone/vit_SelfPatch.py,
#: ``SelfPatch_ViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
#: qkv_bias=True, out_indices=[0, 1])``, mmcv / mmdet imports stubbed, run once in a scratch
#: environment) loaded the ``--to mmdet`` export of the backbone built below with
#: ``strict=False``: only ``fpn1`` missing (its deconv pyramid), nothing unexpected. Its block
#: outputs on the input below (sum, first token's first 4 values), which densessl matched to
#: max |diff| 8e-6. detectron2's own ``ViT`` (facebookresearch/detectron2 @02b5c4e,
#: ``detectron2/modeling/backbone/vit.py``, its detectron2 imports stubbed; ``pretrain_img_size
#: =64``, LayerNorm eps 1e-6) loaded the ``--to detectron2`` export of the same backbone with
#: ``strict=True`` (every key matched) and gave the same last-block output (sum
#: 960.2838166356087, max |diff| 8e-6). With a CLS token the outputs differ (both codebases'
#: ViTs drop the token), as for ViTDet's MAE weights.
SELFPATCH_BLOCKS = [
    (612.3339629806578, [1.1915502548, 0.0444950461, 0.6744769811, 0.0503544509]),
    (960.2838166356087, [1.0456289052, -1.0347700119, 0.5353907942, -0.3116059303]),
]


def test_selfpatch_mmdet_vit_gives_the_same_block_outputs():
    config = BackboneConfig(arch="vit_tiny", patch_size=8, img_size=64, depth=2, embed_dim=32,
                            num_heads=2, cls_token=False)  # fmt: skip
    net = build_backbone(config).eval()
    with torch.no_grad():
        for k, (name, t) in enumerate(sorted(net.model.state_dict().items())):
            n = t.numel()
            v = (0.2 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.29 + k)).float()
            t.copy_(
                v.reshape(t.shape) + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
    assert set(detection_state_dict(net, "mmdet")) == set(official_vit_shapes("backbone.", False))
    n = 2 * 3 * 64 * 64
    x = (
        (torch.sin(torch.arange(n, dtype=torch.float64) * 0.013) * 1.5)
        .float()
        .reshape(2, 3, 64, 64)
    )
    with torch.no_grad():
        outs = net.block_tokens(x, [0, 1], norm=False)
    for (_, patches), (total, first) in zip(outs, SELFPATCH_BLOCKS, strict=True):
        tokens = patches.reshape(2, -1, 32)
        assert float(tokens.double().sum()) == pytest.approx(total, rel=1e-5)
        assert tokens[0, 0, :4].tolist() == pytest.approx(first, abs=1e-5)
