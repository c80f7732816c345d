"""ViT backbone (densessl.models.vit): shapes, attention, checkpoint import and parity with
the official DINO ViT.

Parity values (``tests/fixtures/dino_parity.pt``) were computed once with the official code,
facebookresearch/dino @7c446df5 (``vision_transformer.py``: ``get_intermediate_layers(x, 1)``
and ``get_last_selfattention(x)``), by ``tests/fixtures/make_dino_parity.py``, on weights from
:func:`official_layout_state_dict` below (on :func:`helpers.official_layout_shapes`). The
official code is not part of this project.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import timm
import torch

from densessl.io.checkpoint import FORMAT, CheckpointError
from densessl.models.loading import load_backbone
from densessl.models.vit import (
    ARCHS,
    BackboneConfig,
    ViTBackbone,
    build_backbone,
    dino_state_dict_to_timm,
)
from helpers import FIXTURES, official_layout_shapes

FIXTURE = FIXTURES / "dino_parity.pt"
# Official DINO (facebookresearch/dino @7c446df5) vit_small/16 on parity_input(224, 224):
# ||CLS|| per image and, for image 0, each head's CLS->patch attention mass.
PINNED_CLS_NORM = [19.722563, 19.651461]
PINNED_ATTN_SUM = [0.996435, 0.995471, 0.997418, 0.996750, 0.993363, 0.993050]

# ---------------------------------------------------------------- deterministic DINO weights
#: The two official models: vit_small(patch_size=16) and a small custom one for speed.
PARITY_MODELS = {
    "small16": {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 16, "img_size": 224},
    "custom8": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 64},
}
#: case → (model, input height, width): native, non-square and resampled grids.
PARITY_CASES = {
    "small16_224": ("small16", 224, 224),
    "small16_160x224": ("small16", 160, 224),
    "small16_288": ("small16", 288, 288),
    "small16_96": ("small16", 96, 96),
    "custom8_64": ("custom8", 64, 64),
    "custom8_48x80": ("custom8", 48, 80),
}


def official_layout_state_dict(
    embed_dim: int, depth: int, patch_size: int, img_size: int, seed: int = 0, **_: int
) -> dict[str, torch.Tensor]:
    """Reproducible weights in the official key layout.

    For each key in sorted order: ``torch.randn(shape, generator=g) * 0.05`` with
    ``g = torch.Generator().manual_seed(seed)``; LayerNorm weights get ``1 +`` that. (0.05
    rather than DINO's init std 0.02 so that attention maps are far from uniform.)
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(
        official_layout_shapes(embed_dim, depth, patch_size, img_size).items()
    ):
        value = torch.randn(shape, generator=g) * 0.05
        is_norm_weight = key.endswith("weight") and key.split(".")[-2].startswith("norm")
        out[key] = 1 + value if is_norm_weight else value
    return out


def parity_input(height: int, width: int, seed: int = 1) -> torch.Tensor:
    """The fixed batch of two images fed to both implementations."""
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


def summarize(cls: torch.Tensor, patches: torch.Tensor, attn: torch.Tensor) -> dict:
    """The pinned numbers: a few raw values plus norms and sums (cls [B,D], patches
    [B,h,w,D], attn [B,heads,h*w])."""
    h, w = patches.shape[1:3]
    picks = [(0, 0), (0, w - 1), (h // 2, w // 2), (h - 1, w - 1)]
    return {
        "cls_first8": cls[:, :8],
        "cls_norm": cls.norm(dim=-1),
        "patch_picks": torch.stack([patches[:, r, c, :4] for r, c in picks], dim=1),
        "patch_norm_sum": patches.norm(dim=-1).sum(dim=(1, 2)),
        "patch_sum": patches.sum(dim=(1, 2, 3)),
        "attn_first4": attn[:, :, :4],
        "attn_patch_sum": attn.sum(dim=-1),
        "attn_max": attn.amax(dim=-1),
    }


def weights_checksum(state: dict[str, torch.Tensor]) -> float:
    return float(sum(v.double().sum() for _, v in sorted(state.items())))


def full_training_checkpoint(model: str) -> dict:
    """DINO ``main_dino.py`` layout: teacher ``backbone.*``, DDP student ``module.backbone.*``
    (student weights from seed 1), heads and optimiser entries around them."""
    teacher = official_layout_state_dict(**PARITY_MODELS[model], seed=0)
    student = official_layout_state_dict(**PARITY_MODELS[model], seed=1)
    head = {"head.mlp.0.weight": torch.zeros(8, 4), "head.last_layer.weight_g": torch.ones(8, 1)}
    return {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
        "student": {
            **{f"module.backbone.{k}": v for k, v in student.items()},
            **{f"module.{k}": v for k, v in head.items()},
        },
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
        "args": "Namespace(arch='vit_small')",
    }


def model_config(model: str, **overrides) -> BackboneConfig:
    return BackboneConfig(arch="vit_small", **{**PARITY_MODELS[model], **overrides})


@pytest.fixture(scope="module")
def pinned() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dino_ckpt")
    paths = {}
    for model in PARITY_MODELS:
        paths[model] = folder / f"{model}_checkpoint.pth"
        torch.save(full_training_checkpoint(model), paths[model])
    return paths


def load_parity_model(path: Path, model: str, **kwargs) -> ViTBackbone:
    # custom8's width (64) is not a DINO width, so its head count must be given.
    config = None if model == "small16" else model_config(model, pos_interp="dino")
    return load_backbone(path, config, **kwargs)


# ---------------------------------------------------------------- parity with official DINO
def test_generator_reproduces_fixture_weights(pinned):
    for model, spec in PARITY_MODELS.items():
        state = official_layout_state_dict(**spec)
        assert weights_checksum(state) == pytest.approx(pinned["weights_checksum"][model], abs=1e-9)


def test_pinned_values_are_the_official_ones(pinned):
    # A few literal values from facebookresearch/dino @7c446df5 (vit_small, patch 16, 224 px),
    # so a regenerated fixture cannot silently drift.
    native = pinned["small16_224"]
    assert native["cls_norm"].tolist() == pytest.approx(PINNED_CLS_NORM, abs=1e-4)
    assert native["attn_patch_sum"][0].tolist() == pytest.approx(PINNED_ATTN_SUM, abs=1e-5)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_official_dino(case, pinned, checkpoints):
    model, height, width = PARITY_CASES[case]
    backbone = load_parity_model(checkpoints[model], model)
    assert backbone.config.pos_interp == "dino"
    x = parity_input(height, width)
    with torch.no_grad():
        cls, patches = backbone.tokens(x)
        attn = backbone.last_attention(x)
    ours = summarize(cls, patches, attn)
    for key, expected in pinned[case].items():
        torch.testing.assert_close(ours[key], expected, atol=2e-5, rtol=1e-5, msg=f"{case}/{key}")


def test_timm_interpolation_matches_at_native_size_only(checkpoints):
    """pos_interp='timm' (antialiased bicubic to a size) equals DINO's resampling only when
    nothing is resampled. Measured max |diff| of the patch tokens (LayerNorm-ed, norm ~20) on
    this ViT-S/16 with white-noise pos_embed: 224 px 0 (3e-6 vs official), 160x224 0.063,
    288 px 0.023, 448 px 0.023, 96 px 0.135; CLS 0.022 / 0.009 / 0.005 / 0.085."""
    dino = load_parity_model(checkpoints["small16"], "small16")
    timm_mode = load_parity_model(checkpoints["small16"], "small16", pos_interp="timm")
    with torch.no_grad():
        for size, bound in (((224, 224), 0.0), ((160, 224), 0.2), ((96, 96), 0.5)):
            x = parity_input(*size)
            diff = (dino.tokens(x)[1] - timm_mode.tokens(x)[1]).abs().max().item()
            assert diff <= bound if bound == 0.0 else 0.0 < diff < bound


def test_student_checkpoint_and_dino_formats_give_the_same_weights(tmp_path, checkpoints):
    state = official_layout_state_dict(**PARITY_MODELS["custom8"])
    full = full_training_checkpoint("custom8")
    assert set(dino_state_dict_to_timm(full)) == set(state)  # head and prefixes gone
    student = dino_state_dict_to_timm(full, which="student")
    expected_student = official_layout_state_dict(**PARITY_MODELS["custom8"], seed=1)
    assert all(torch.equal(student[k], v) for k, v in expected_student.items())
    reference = load_parity_model(checkpoints["custom8"], "custom8").model.state_dict()
    layouts = {
        "backbone_only.pth": state,  # dino_deitsmall16_pretrain.pth layout
        "wrapped_state_dict.pth": {"state_dict": state},
        "wrapped_model.pth": {"model": {f"module.{k}": v for k, v in state.items()}},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        loaded = load_parity_model(tmp_path / name, "custom8").model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in reference.items()), name
    from_student = load_parity_model(checkpoints["custom8"], "custom8", which="student")
    assert torch.equal(from_student.model.pos_embed, expected_student["pos_embed"])


def test_load_infers_the_architecture_from_the_weights(checkpoints):
    backbone = load_backbone(checkpoints["small16"])
    config = backbone.config
    assert (config.arch, config.patch_size, config.img_size) == ("vit_small", 16, 224)
    assert (backbone.embed_dim, backbone.num_heads, config.resolved_depth) == (384, 6, 12)
    assert config.cls_token and config.final_norm and not backbone.training
    with pytest.raises(CheckpointError, match=r"cannot infer num_heads.*embed_dim 64"):
        load_backbone(checkpoints["custom8"])


def test_load_into_a_larger_grid_resamples_pos_embed_like_dino(checkpoints):
    # Resampling 8x8 -> 16x16 once at load time equals DINO's per-forward resampling.
    native = load_parity_model(checkpoints["custom8"], "custom8")
    bigger = load_backbone(
        checkpoints["custom8"], model_config("custom8", img_size=128, pos_interp="dino")
    )
    assert bigger.model.pos_embed.shape == (1, 1 + 16 * 16, 64)
    x = parity_input(128, 128)
    with torch.no_grad():
        torch.testing.assert_close(bigger.tokens(x)[1], native.tokens(x)[1], atol=1e-6, rtol=0)


def test_densessl_checkpoint_loads_with_its_saved_config(tmp_path):
    config = BackboneConfig(
        arch="vit_tiny", embed_dim=32, depth=1, num_heads=2, patch_size=8, img_size=32
    )
    source = build_backbone(config)
    state = {
        "format": FORMAT,
        "backbone": source.state_dict(),
        "config": {"backbone": vars(config)},
    }
    torch.save(state, tmp_path / "last.pt")
    loaded = load_backbone(tmp_path / "last.pt")
    assert loaded.config == config
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(loaded.tokens(x)[1], source.eval().tokens(x)[1])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("text", "not a loadable PyTorch checkpoint"),
        ("zip", "not a loadable PyTorch checkpoint"),
        ({"foo": torch.zeros(2), "bar": 1}, r"missing \['patch_embed.proj.weight'.*found a dict"),
        ({"student": {"module.backbone.pos_embed": torch.zeros(1)}}, "no 'teacher' network"),
        ([torch.zeros(2)], "expected a dict of tensors, found an object of type list"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("this is not a checkpoint\n")
    elif content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/readme.txt", "no pickle in here")
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "missing.pth")


def test_weights_that_do_not_fit_the_config_are_reported(checkpoints):
    with pytest.raises(CheckpointError, match=r"shape mismatches.*patch_embed\.proj\.weight"):
        load_backbone(checkpoints["custom8"], model_config("custom8", patch_size=16))


# ---------------------------------------------------------------- shapes and contract
def tiny(**overrides) -> BackboneConfig:
    spec = {"arch": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}
    return BackboneConfig(**{**spec, "img_size": 32, **overrides})


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("patch_size", [8, 16])
def test_shapes_for_every_arch_and_patch_size(arch, patch_size):
    backbone = build_backbone(
        BackboneConfig(arch=arch, patch_size=patch_size, depth=1, img_size=64)
    )
    dim, _, heads = ARCHS[arch]
    assert (backbone.embed_dim, backbone.num_heads, backbone.patch_size) == (dim, heads, patch_size)
    x = torch.randn(2, 3, 48, 80)  # non-square, not the creation size
    with torch.no_grad():
        cls, patches, attn = backbone.tokens_and_attention(x)
    h, w = backbone.grid_size(48, 80)
    assert (h, w) == (48 // patch_size, 80 // patch_size)
    assert cls.shape == (2, dim) and patches.shape == (2, h, w, dim)
    assert attn.shape == (2, heads, h * w)
    assert all(block.attn.mode == "auto" for block in backbone.model.blocks)


def test_patch_grid_is_row_major_like_timm_forward_features():
    backbone = build_backbone(tiny()).eval()
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        cls, patches = backbone.tokens(x)
        reference = backbone.model.forward_features(x)
    torch.testing.assert_close(cls, reference[:, 0])
    torch.testing.assert_close(patches, reference[:, 1:].reshape(2, 3, 5, 32))


def test_without_cls_token():
    backbone = build_backbone(tiny(cls_token=False))
    assert backbone.model.pos_embed.shape == (1, 16, 32) and not backbone.model.no_embed_class
    cls, patches = backbone.tokens(torch.randn(2, 3, 16, 24))
    assert cls is None and patches.shape == (2, 2, 3, 32)
    for method in (backbone.last_attention, backbone.tokens_and_attention):
        with pytest.raises(ValueError, match=r"needs a CLS token.*cls_token=False"):
            method(torch.randn(1, 3, 16, 16))


def test_final_norm_false_gives_pre_norm_tokens():
    with_norm = build_backbone(tiny()).eval()
    without = build_backbone(tiny(final_norm=False)).eval()
    weights = {k: v for k, v in with_norm.model.state_dict().items() if not k.startswith("norm.")}
    without.model.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, patches = with_norm.tokens(x)
        raw_cls, raw_patches = without.tokens(x)
    assert not torch.allclose(patches, raw_patches, atol=1e-3)
    torch.testing.assert_close(with_norm.model.norm(raw_patches), patches)
    torch.testing.assert_close(with_norm.model.norm(raw_cls), cls)


def test_attention_is_the_cls_row_of_the_last_block_softmax():
    backbone = build_backbone(tiny(depth=3)).eval()
    captured = {}
    backbone.model.blocks[-1].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        cls, patches, attn = backbone.tokens_and_attention(x)
        block = backbone.model.blocks[-1]
        q, k, _ = block.attn.qkv(block.norm1(captured["x"])).reshape(2, -1, 3, 2, 16).unbind(2)
        full = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1) / 4.0).softmax(-1)
    torch.testing.assert_close(attn, full[:, :, 0, 1:])
    assert (attn.sum(-1) <= 1).all()
    to_cls = full[:, :, 0, 0]
    torch.testing.assert_close(attn.sum(-1), 1 - to_cls)
    torch.testing.assert_close(attn.mean(1).sum(-1) + to_cls.mean(1), torch.ones(2))
    with torch.no_grad():
        separate_cls, separate_patches = backbone.tokens(x)
        torch.testing.assert_close(backbone.last_attention(x), attn, rtol=0, atol=0)
    torch.testing.assert_close(separate_cls, cls, rtol=0, atol=0)
    torch.testing.assert_close(separate_patches, patches, rtol=0, atol=0)


def test_train_mode_with_drop_path_and_gradients():
    backbone = build_backbone(tiny(depth=4, drop_path_rate=0.5)).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    _, first = backbone.tokens(x)
    _, second = backbone.tokens(x)
    assert not torch.allclose(first, second)  # paths dropped at random
    first.square().mean().backward()
    assert backbone.model.patch_embed.proj.weight.grad is not None
    backbone.eval()
    torch.testing.assert_close(backbone.tokens(x)[1], backbone.tokens(x)[1])
    backbone.model.set_grad_checkpointing(True)
    _, patches = backbone.train().tokens(x)
    assert patches.shape == (4, 4, 4, 32) and patches.requires_grad


def test_inputs_follow_module_dtype_and_bad_sizes_are_named():
    backbone = build_backbone(tiny()).double().eval()
    cls, patches = backbone.tokens(torch.randn(1, 3, 16, 32))  # float32 input
    assert cls.dtype == patches.dtype == torch.float64
    with pytest.raises(ValueError, match="input size 20x32 is not a multiple of the patch size 8"):
        backbone.tokens(torch.randn(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        backbone.tokens(torch.randn(3, 16, 16))


@pytest.mark.parametrize(
    "config",
    [tiny(), tiny(patch_size=16, cls_token=False, final_norm=False), BackboneConfig(depth=1)],
)
def test_timm_spec_recreates_the_model(config):
    backbone = build_backbone(config).eval()
    spec = backbone.timm_spec()
    assert timm.is_model(spec["architecture"])
    model = timm.create_model(spec["architecture"], pretrained=False, **spec["kwargs"]).eval()
    model.load_state_dict(backbone.model.state_dict(), strict=True)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = model.forward_features(x)[:, backbone.num_prefix_tokens :]
        torch.testing.assert_close(backbone.tokens(x)[1].flatten(1, 2), expected)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"arch": "vit_colossal"}, "unknown arch 'vit_colossal'"),
        ({"img_size": 100}, "img_size 100 is not a multiple of patch_size 16"),
        ({"embed_dim": 100, "num_heads": 3}, "embed_dim 100 is not divisible by num_heads 3"),
        ({"pos_interp": "bicubic"}, "pos_interp must be one of"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        BackboneConfig(**overrides)


def test_encode_subset_matches_tokens():
    """``encode`` (LOCA): all tokens equal ``tokens``; subsets shared or per image; no PE."""
    backbone = build_backbone(BackboneConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=1,
                                             cls_token=False, pos_interp="bilinear"))  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    full = backbone.tokens(x)[1].flatten(1, 2)
    torch.testing.assert_close(backbone.encode(x), full)
    keep = torch.tensor([[0, 5, 2], [15, 1, 3]])
    alone = backbone.encode(x, keep)
    assert alone.shape == (2, 3, 192)
    # per-image subsets: image 0 keeps the same tokens as the shared subset below
    shared = backbone.encode(x, torch.tensor([0, 5, 2]))
    torch.testing.assert_close(shared[0], alone[0])
    no_pe = backbone.encode(x, pos_embed=False)
    assert not torch.allclose(no_pe, full)
    with pytest.raises(ValueError, match="CLS"):
        build_backbone(BackboneConfig(arch="vit_tiny", depth=1)).encode(torch.randn(1, 3, 32, 32))


def test_gelu_tanh_backbone_matches_plain_timm_with_its_export_kwargs():
    from dataclasses import replace

    from densessl.models.vit import timm_spec_for

    config = BackboneConfig(
        arch="vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=32, num_heads=2,
        act_layer="gelu_tanh",
    )  # fmt: skip
    ours = build_backbone(config).eval()
    spec = timm_spec_for(config)
    assert spec["kwargs"]["act_layer"] == "gelu_tanh"
    plain = timm.create_model(spec["architecture"], pretrained=False, **spec["kwargs"]).eval()
    plain.load_state_dict(ours.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = plain.forward_features(x)[:, plain.num_prefix_tokens :]
        got = ours.tokens(x)[1].flatten(1, 2)
        exact = build_backbone(replace(config, act_layer="gelu")).eval()
        exact.load_state_dict(ours.state_dict())
        moved = (exact.tokens(x)[1].flatten(1, 2) - got).abs().max()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert 0 < moved < 1e-2  # the approximation moves the features a little, not nothing
    with pytest.raises(ValueError, match="act_layer"):
        BackboneConfig(act_layer="relu")
