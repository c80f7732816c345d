"""NeCo releases (vpariza/NeCo @3932160): one network's bare state dict per released file
(``neco_on_dino_vit16_teacher.ckpt``: DINO's ViT; ``neco_on_dinov2r_vit14_teacher.ckpt``:
DINOv2's ``DinoVisionTransformer`` with registers), or the Lightning ``.ckpt`` of
``train_with_neco.py`` (``model.`` student, ``teacher.``), each with NeCo's projection head."""

from __future__ import annotations

import json

import pytest
import torch

from densessl.cli import main
from densessl.export import timm_from_export
from densessl.io.checkpoint import CheckpointError
from densessl.models.formats.detect import convert, detect_format, read_checkpoint
from densessl.models.loading import load_backbone
from helpers import write_neco

#: NeCo's own models on the files ``write_neco`` writes (seeded weights, width 32, depth 2,
#: 2 heads, head 16/16/8), on CPU with ``XFORMERS_DISABLED=1``, patch features on
#: ``torch.randn(2, 3, H, W, generator=manual_seed(1))``:
#: v1: ``src/models/vit.py`` ``VisionTransformer(img_size=[32], patch_size=16, qkv_bias=True,
#: norm_layer=LayerNorm(eps=1e-6), n_layers_projection_head=3).forward_backbone(x)[:, 1:]``
#: at 48x64 (the backbone weights are Leopart's test's, so are the values); densessl 1.5e-8.
V1_FIRST = [
    [-0.011923184618353844, -0.005841212812811136, -0.09873171895742416, -0.004991448950022459],
    [-0.011848753318190575, -0.1565747857093811, -0.09921220690011978, -0.06212293729186058],
    [-0.01191349234431982, 0.054505739361047745, -0.11122177541255951, -0.04704766348004341],
]
V1_LAST = [-0.047408442944288254, -0.13092316687107086, -0.21119089424610138, 0.003987039905041456]
V1_ABS_SUM = 44.1384162902832
#: v2: ``src/models/vit_v2.py`` ``DinoVisionTransformer(img_size=56, patch_size=14,
#: init_values=1.0, block_fn=Block(attn_class=MemEffAttention), num_register_tokens=4)
#: .forward_features(x)["x_norm_patchtokens"]`` at 70x42 (positions resampled from 4x4 to
#: 5x3 with NeCo's offset); densessl 3.7e-9 (and 4.5e-8 for the 0-register file).
V2R_FIRST = [
    [-0.01703566499054432, 0.03183789923787117, 0.03797362744808197, -0.03335455432534218],
    [0.07416705042123795, 0.12984219193458557, 0.03805271163582802, -0.0017705183709040284],
    [0.04078884422779083, 0.04788798466324806, 0.03688638284802437, -0.0008352185832336545],
]
V2R_LAST = [0.015419826842844486, 0.05085162818431854, -0.052857350558042526, 0.0801636353135109]
V2R_ABS_SUM = 51.922935485839844
V2 = {"version": "v2", "p": 14, "img": 56}


def _features(backbone, size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return backbone.tokens(x)[1].flatten(1, 2)


@pytest.mark.parametrize("container", ["released", "lightning"])
def test_dino_layout_equals_necos_vit(tmp_path, container):
    path = tmp_path / "neco_on_dino_vit16_teacher.ckpt"
    write_neco(path, container=container)
    assert detect_format(read_checkpoint(path)) == "neco"
    backbone = load_backbone(path, num_heads=2)
    assert backbone.config.family == "vit" and backbone.config.pos_interp == "dino"
    f = _features(backbone, (48, 64))
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(V1_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(V1_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - V1_ABS_SUM) < 1e-4


@pytest.mark.parametrize("container", ["released", "lightning"])
def test_dinov2r_layout_equals_necos_dinov2_vit(tmp_path, container):
    path = tmp_path / "neco_on_dinov2r_vit14_teacher.ckpt"
    write_neco(path, container=container, registers=4, **V2)
    state = read_checkpoint(path)
    assert detect_format(state) == "neco"  # not "dinov2": NeCo's head is there
    converted = convert(state, path)
    assert "mask_token" not in converted.weights and converted.weights["reg_token"].shape[1] == 4
    assert converted.fields["family"] == "dinov2" and converted.fields["num_registers"] == 4
    backbone = load_backbone(path, num_heads=2)
    assert (backbone.config.family, backbone.num_registers, backbone.patch_size) == (
        "dinov2",
        4,
        14,
    )
    f = _features(backbone, (70, 42))
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(V2R_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(V2R_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - V2R_ABS_SUM) < 1e-4


def test_dinov2r_xr_has_no_registers(tmp_path):
    """DINOv2R-XR: DINOv2-R weights post-trained with ``num_register_tokens: 0``."""
    path = tmp_path / "neco_on_dinov2r_xr_vit14_teacher.ckpt"
    write_neco(path, **V2)
    backbone = load_backbone(path, num_heads=2)
    assert backbone.config.family == "dinov2" and backbone.num_registers == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_teacher_by_default_student_on_request_head_in_extras(tmp_path, version):
    path = tmp_path / "neco.ckpt"
    kwargs = V2 if version == "v2" else {}
    teacher = write_neco(path, container="lightning", **kwargs)
    state = read_checkpoint(path)
    converted = convert(state, path)
    assert set(converted.extras) == {f"teacher.{k}" for k in teacher if "projection_head" in k}
    raw = state["state_dict"]
    assert torch.equal(converted.weights["blocks.0.norm1.bias"], raw["teacher.blocks.0.norm1.bias"])
    student = convert(state, path, which="student").weights
    assert torch.equal(student["blocks.0.norm1.bias"], raw["model.blocks.0.norm1.bias"])


def test_headless_files_read_as_dino_or_dinov2_and_as_neco_when_named(tmp_path):
    """A released file without the head is an official DINO / DINOv2 layout: detected as
    such, the same weights as ``--format neco``."""
    for version, looks in (("v1", "dino"), ("v2", "dinov2")):
        path = tmp_path / f"{version}.ckpt"
        write_neco(path, head=False, **(V2 if version == "v2" else {}))
        state = read_checkpoint(path)
        assert detect_format(state) == looks
        named, detected = convert(state, path, fmt="neco"), convert(state, path)
        assert named.format == "neco" and set(named.weights) == set(detected.weights)
        assert all(torch.equal(named.weights[k], v) for k, v in detected.weights.items())


def test_leopart_and_official_dinov2_files_are_not_neco(tmp_path):
    from helpers import write_leopart

    write_leopart(tmp_path / "leopart.ckpt")
    assert detect_format(read_checkpoint(tmp_path / "leopart.ckpt")) == "leopart"
    write_neco(tmp_path / "v2.ckpt", head=False, **V2)
    assert detect_format(read_checkpoint(tmp_path / "v2.ckpt")) == "dinov2"


def test_partial_and_wrong_files_name_neco_and_what_is_missing(tmp_path, capsys):
    path = tmp_path / "partial.ckpt"
    teacher = write_neco(path)
    torch.save({k: v for k, v in teacher.items() if k != "pos_embed"}, path)
    with pytest.raises(CheckpointError, match=r"partial\.ckpt: .*NeCo.*missing \['pos_embed'\]"):
        load_backbone(path)
    lightning = tmp_path / "student_only.ckpt"
    write_neco(lightning, container="lightning")
    state = read_checkpoint(lightning)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    torch.save(state, lightning)
    with pytest.raises(CheckpointError, match=r"NeCo Lightning .*no teacher.*--which student"):
        load_backbone(lightning)
    assert load_backbone(lightning, which="student", num_heads=2).has_cls_token
    out = tmp_path / "e"
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densessl: error:") and err.count("\n") == 1 and "NeCo" in err
    flsl = tmp_path / "x.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, flsl)
    assert main(["export", str(flsl), "--out", str(out), "--format", "neco"]) == 2
    assert "--format neco, but this does not look like a NeCo" in capsys.readouterr().err


def test_dinov2r_file_round_trips_through_eval_and_export(tmp_path, capsys):
    """A 192-wide DINOv2-R ViT (3 heads inferred), one block, 4 registers."""
    path = tmp_path / "neco_on_dinov2r_vit14_teacher.ckpt"
    write_neco(path, d=192, depth=1, registers=4, p=14, img=28, version="v2")
    result = tmp_path / "cluster.json"
    fast = ["seeds=[0]", "n_init=1", "iters=5", "num_clusters=[4]", "data.num_images=4"]
    argv = ["eval", "cluster", "--backbone", str(path), "--out", str(result), "--no-progress"]
    assert main([*argv, *fast]) == 0
    assert json.loads(result.read_text())["backbone"]["kind"] == "neco"
    export = tmp_path / "export"
    assert main(["export", str(path), "--out", str(export)]) == 0
    meta = json.loads((export / "meta.json").read_text())
    assert meta["source"]["kind"] == "neco" and meta["verified_max_abs_diff"] < 1e-5
    backbone = load_backbone(path)
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = backbone.tokens(x)[1].flatten(1, 2)
        model = timm_from_export(export)
        got = model.forward_features(x)[:, model.num_prefix_tokens :]
    assert model.num_prefix_tokens == 5  # CLS + 4 registers
    assert (got - expected).abs().max() < 1e-5
    capsys.readouterr()


def test_lightning_file_with_sacred_lists_loads_without_running_code(tmp_path):
    """``hyper_parameters`` hold sacred ``ReadOnlyList`` s: read as plain lists."""
    path = tmp_path / "epoch=24-step=500.ckpt"
    write_neco(path, container="lightning")
    with pytest.raises(Exception, match="ReadOnlyList"):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    state = read_checkpoint(path)
    hparams = state["hyper_parameters"]
    assert type(hparams["crops_for_assign"]) is list and hparams["crops_for_assign"] == [0, 1]
    assert hparams["sort_net"] == "bitonic" and detect_format(state) == "neco"


@pytest.mark.parametrize(
    ("width", "version", "patch", "img", "registers", "arch"),
    [
        (384, "v1", 16, 224, 0, "vit_small"),  # neco_on_dino_vit16 (224 px table: 1 + 14*14)
        (384, "v2", 14, 518, 4, "vit_small"),  # neco_on_dinov2r_vit14 (518 px: 1 + 37*37)
        (768, "v2", 14, 518, 0, "vit_base"),  # vit-base/neco_on_dinov2_vit14
    ],
)
def test_released_architectures_are_inferred(tmp_path, width, version, patch, img, registers, arch):
    """The README's ViT-S/16, ViT-S/14 (DINOv2-R) and ViT-B/14 at their widths and position
    tables; one block here, the depth is read off the weights."""
    path = tmp_path / "neco.ckpt"
    write_neco(path, version, d=width, depth=1, p=patch, img=img, registers=registers)
    backbone = load_backbone(path)
    config = backbone.config
    assert (config.arch, config.patch_size, config.resolved_depth) == (arch, patch, 1)
    assert (config.img_size, backbone.num_registers) == (img, registers)
    assert config.family == ("dinov2" if version == "v2" else "vit")
    grid = backbone.tokens(torch.zeros(1, 3, 2 * patch, 3 * patch))[1].shape
    assert grid == (1, 2, 3, width)
