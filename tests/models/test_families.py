"""Backbone families (vit, dinov2 ± registers, dinov3): contract, official files, runs, export.

Parity values: ``tests/fixtures/official_families.pt``, written by
``tests/fixtures/make_official_families.py`` with the official ``DinoVisionTransformer`` of
facebookresearch/dinov2 @b8931f7 and facebookresearch/dinov3 @6876159 on the seeded weights
of ``official_layouts.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from official_layouts import dinov2_keys, dinov3_keys, images, seeded_state

from densessl.evaluation.api import evaluate
from densessl.evaluation.features import build_extractor
from densessl.export import export_backbone, timm_from_export
from densessl.io.checkpoint import CheckpointError
from densessl.models.arch_checks import check_config_fits
from densessl.models.formats.dinov2 import dinov2_to_timm
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.train.trainer import Trainer, read_metrics
from densessl.viz.panels import visualize
from helpers import CPU, family_overrides, run_config

FIXTURE = Path(__file__).parents[1] / "fixtures" / "official_families.pt"

#: name → (official keys, input size of the pinned outputs)
OFFICIAL = {
    "dinov2_reg0": (dinov2_keys(0), (70, 42)),
    "dinov2_reg4": (dinov2_keys(4), (70, 42)),
    "dinov3": (dinov3_keys(), (80, 48)),
}


def small(family: str, **overrides) -> BackboneConfig:
    patch = {"vit": 8, "dinov2": 14, "dinov3": 16}[family]
    spec = {"arch": "vit_tiny", "family": family, "patch_size": patch, "img_size": 4 * patch}
    spec.update(depth=2, embed_dim=32, num_heads=2)
    return BackboneConfig(**{**spec, **overrides})


FAMILY_CONFIGS = {
    "vit+reg2": small("vit", num_registers=2),
    "dinov2": small("dinov2"),
    "dinov2_reg4": small("dinov2", num_registers=4),
    "dinov3": small("dinov3"),
}


def _official_file(tmp_path: Path, name: str, wrap=lambda state: state) -> Path:
    path = tmp_path / f"{name}.pth"
    torch.save(wrap(seeded_state(OFFICIAL[name][0])), path)
    return path


# ---------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_every_family_keeps_prefix_tokens_out_of_the_grid(name):
    torch.manual_seed(0)
    backbone = build_backbone(FAMILY_CONFIGS[name]).eval()
    p = backbone.patch_size
    x = torch.randn(2, 3, 3 * p, 5 * p)  # non-square, not the creation size
    seen = {}
    last = backbone.model.blocks[-1].attn
    last.mode = "explicit"  # the explicit product passes the softmax through attn_drop
    hook = last.attn_drop.register_forward_hook(lambda m, i, o: seen.update(full=i[0]))
    with torch.no_grad():
        cls, patches, attn = backbone.tokens_and_attention(x)
        tokens = backbone.model.forward_features(x)
    hook.remove()
    prefix = backbone.num_prefix_tokens
    assert prefix == 1 + backbone.num_registers
    assert patches.shape == (2, 3, 5, 32) and cls.shape == (2, 32)
    torch.testing.assert_close(patches.flatten(1, 2), tokens[:, prefix:], rtol=0, atol=1e-6)
    torch.testing.assert_close(cls, tokens[:, 0], rtol=0, atol=1e-6)
    # The CLS row over the patches only (registers and CLS columns dropped).
    torch.testing.assert_close(attn, seen["full"][:, :, 0, prefix:], rtol=0, atol=1e-6)
    if backbone.num_registers:
        assert float(attn.sum(-1).max()) < 1.0 - 1e-4
    deep, first = backbone.block_tokens(x, [-1, 0])
    torch.testing.assert_close(deep[1], patches, rtol=0, atol=1e-6)
    assert first[1].shape == patches.shape and not torch.allclose(first[1], patches)


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_cls_free_variants_encode_subsets_with_registers(name):
    torch.manual_seed(0)
    backbone = build_backbone(replace(FAMILY_CONFIGS[name], cls_token=False)).eval()
    with torch.no_grad():  # layer scale starts at 1e-5: let the attention (RoPE) show
        for key, value in backbone.named_parameters():
            if "gamma" in key:
                value.fill_(1.0)
    p = backbone.patch_size
    x = torch.randn(2, 3, 4 * p, 4 * p)
    with torch.no_grad():
        cls, patches = backbone.tokens(x)
        every = backbone.encode(x)
        keep = torch.tensor([[0, 5, 9], [15, 3, 2]])
        subset = backbone.encode(x, keep)
        alone = backbone.encode(x[:1], keep[0])
        unplaced = backbone.encode(x, keep, pos_embed=False)
    assert cls is None and subset.shape == (2, 3, 32)
    torch.testing.assert_close(every, patches.flatten(1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, subset[:1], rtol=0, atol=1e-5)
    assert not torch.allclose(unplaced, subset, atol=1e-4)  # positions (table or RoPE) matter


def test_rope_and_register_options_are_checked():
    with pytest.raises(ValueError, match="family must be one of"):
        BackboneConfig(family="dinov4")
    with pytest.raises(ValueError, match="multiple of 4"):
        BackboneConfig(family="dinov3", embed_dim=36, num_heads=6)
    with pytest.raises(ValueError, match="no act_layer option"):
        BackboneConfig(family="dinov3", act_layer="gelu_tanh")
    assert BackboneConfig(family="dinov3").resolved_num_registers == 4
    assert BackboneConfig(family="dinov2").resolved_num_registers == 0


# ---------------------------------------------------------------- official files
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_files_give_the_official_features(name, tmp_path):
    reference = torch.load(FIXTURE, weights_only=True)[name]
    extractor = build_extractor(_official_file(tmp_path, name), num_heads=2)
    backbone = extractor.model
    assert backbone.config.family == name.split("_")[0]
    assert backbone.num_registers == (0 if name == "dinov2_reg0" else 4)
    with torch.no_grad():
        cls, patches = backbone.tokens(images(size=OFFICIAL[name][1]))
    # Exact in practice (0.0 measured); the official position interpolation included.
    torch.testing.assert_close(cls, reference["cls"], rtol=0, atol=1e-5)
    torch.testing.assert_close(patches.flatten(1, 2), reference["patches"], rtol=0, atol=1e-5)
    assert extractor.source["kind"] == name.split("_")[0]


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_files_equal_timms_own_conversion(name, tmp_path):
    backbone = load_backbone(_official_file(tmp_path, name), num_heads=2, pos_interp="timm")
    spec = backbone.timm_spec()
    reference = timm.create_model(spec["architecture"], **spec["kwargs"]).eval()
    module = __import__(type(reference).__module__, fromlist=["checkpoint_filter_fn"])
    reference.load_state_dict(
        module.checkpoint_filter_fn(seeded_state(OFFICIAL[name][0]), reference)
    )
    for size in (4 * backbone.patch_size, 5 * backbone.patch_size):  # native grid, and not
        x = images(size=(size, 3 * backbone.patch_size))
        with torch.no_grad():
            ours = backbone.tokens(x)[1].flatten(1, 2)
            theirs = reference.forward_features(x)[:, reference.num_prefix_tokens :]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def _chunked(state):  # FSDP block chunks of DINOv2 training: blocks.<chunk>.<i>.
    return {k.replace("blocks.1.", "blocks.0.1.").replace("blocks.0.n", "blocks.0.0.n")
            .replace("blocks.0.a", "blocks.0.0.a").replace("blocks.0.l", "blocks.0.0.l")
            .replace("blocks.0.m", "blocks.0.0.m"): v for k, v in state.items()}  # fmt: skip


def _prefixed(prefix: str, chunk: bool = False):
    def wrap(state):
        return {f"{prefix}{k}": v for k, v in (_chunked(state) if chunk else state).items()}

    return wrap


@pytest.mark.parametrize(
    ("name", "which", "wrap"),
    [
        ("dinov2_reg4", "teacher", lambda s: {"teacher": _prefixed("backbone.", True)(s)}),
        ("dinov2_reg4", "teacher", lambda s: {"model": _prefixed("teacher.backbone.")(s)}),
        ("dinov3", "student", lambda s: {"model": _prefixed("student.backbone.")(s)}),
    ],
    ids=["dinov2-teacher-chunked", "dinov2-flat-model", "dinov3-flat-student"],
)
def test_training_checkpoint_layouts(name, which, wrap, tmp_path):
    plain = load_backbone(_official_file(tmp_path, name), num_heads=2)
    (tmp_path / "wrapped").mkdir()
    loaded = load_backbone(
        _official_file(tmp_path / "wrapped", name, wrap), num_heads=2, which=which
    )
    for key, value in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_timm_safetensors_layout_loads_with_its_family(name, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = build_backbone(FAMILY_CONFIGS[name]).eval()
    save_file(source.model.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = load_backbone(tmp_path / "model.safetensors", num_heads=2, pos_interp="timm")
    assert loaded.config.family == source.config.family
    assert loaded.num_registers == source.num_registers
    x = torch.randn(1, 3, 3 * source.patch_size, 2 * source.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.tokens(x)[1], source.tokens(x)[1], rtol=0, atol=0)


def test_wrong_official_files_say_what_is_wrong(tmp_path):
    periods = seeded_state(dinov3_keys())
    periods["rope_embed.periods"] = periods["rope_embed.periods"] * 2
    torch.save(periods, tmp_path / "v3.pth")
    with pytest.raises(CheckpointError, match="not DINOv3's base-100 periods"):
        load_backbone(tmp_path / "v3.pth", num_heads=2)
    swiglu = {k.replace("mlp.fc1", "mlp.w12"): v for k, v in seeded_state(dinov2_keys(4)).items()}
    torch.save(swiglu, tmp_path / "g14.pth")
    with pytest.raises(CheckpointError, match="ViT-g/14"):
        load_backbone(tmp_path / "g14.pth", num_heads=2)
    weights = dinov2_to_timm(seeded_state(dinov2_keys(4)))
    config = BackboneConfig(family="dinov2", patch_size=14, img_size=56, depth=2, embed_dim=64,
                            num_heads=2)  # fmt: skip
    with pytest.raises(CheckpointError, match="num_registers=0 but the weights hold 4"):
        check_config_fits(config, weights, "reg.pth")


# ---------------------------------------------------------------- runs on every family
@pytest.mark.parametrize("family", ["dinov2_reg", "dinov3"])
def test_train_resume_evaluate_visualize_export(family, tmp_path):
    from PIL import Image

    picture = tmp_path / "scene.png"
    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(picture)
    common = [*CPU, "optim.steps=3", "train.log_every=1", *family_overrides("leopart", family)]
    cfg = run_config("leopart", *common, preset="smoke")
    Trainer(cfg, tmp_path / "straight").fit()
    Trainer(cfg, tmp_path / "resumed").fit(stop_at=2)
    Trainer(cfg, tmp_path / "resumed").fit()
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = evaluate(
        "cluster", tmp_path / "straight", "scenes", data={"num_images": 8, "size": 64},
        progress=False, verbose=False, num_clusters=[4], seeds=1,
    )  # fmt: skip
    assert result["backbone"]["kind"] == "run" and 0.0 <= result["summary"][0]["miou"] <= 1.0
    panels = visualize(tmp_path / "straight", [picture], tmp_path / "viz", size=32,
                       clusters=3, progress=False)  # fmt: skip
    assert panels and panels[0].stat().st_size > 0
    out = export_backbone(tmp_path / "straight", tmp_path / "export")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["verified_max_abs_diff"] == 0.0
    assert meta["backbone"]["family"] == cfg.backbone.family
    plain = timm_from_export(out)
    teacher = build_extractor(tmp_path / "straight").model
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ours = teacher.tokens(x)[1].flatten(1, 2)
        theirs = plain.forward_features(x)[:, plain.num_prefix_tokens :]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_vit_large_step_at_depth_two(tmp_path):
    """ViT-L/14 (DINOv2-R widths: 1024-d, 16 heads) at depth 2: one training step on CPU."""
    cfg = run_config(
        "leopart", *CPU, "backbone.arch=vit_large", "backbone.family=dinov2",
        "backbone.num_registers=4", "backbone.patch_size=14", "backbone.depth=2",
        "backbone.embed_dim=null", "backbone.num_heads=null", "backbone.img_size=56",
        "views.global_size=56", "views.local_size=28", "views.num_local=2",
        "backbone.grad_checkpointing=true", "optim.steps=1", "train.log_every=1",
        "data.batch_size=2", preset="smoke",
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "large")
    backbone = trainer.method.student.backbone
    assert (backbone.embed_dim, backbone.num_heads, backbone.num_registers) == (1024, 16, 4)
    trainer.fit()
    (record,) = read_metrics(tmp_path / "large")
    assert record["step"] == 1 and math.isfinite(record["loss"])


@pytest.mark.parametrize("name", ["dinov2_reg4", "dinov3"])
def test_cls_free_method_post_trains_from_an_official_file(name, tmp_path):
    """SelfPatch (no CLS token) from an official file with one: the CLS token is dropped."""
    patch = 14 if name.startswith("dinov2") else 16
    backbone = [f"backbone.family={name.split('_')[0]}", "backbone.num_registers=4",
                f"backbone.patch_size={patch}", "backbone.depth=2", "backbone.embed_dim=64",
                "backbone.num_heads=2", f"backbone.img_size={4 * patch}",
                f"views.global_size={4 * patch}", f"views.local_size={3 * patch}",
                "views.num_local=2"]  # fmt: skip
    cfg = run_config("selfpatch", *CPU, *backbone, "optim.steps=1", preset="smoke")
    official = _official_file(tmp_path, name)
    trainer = Trainer(cfg, tmp_path / "post", init=str(official))
    reference = load_backbone(official, num_heads=2)
    ours = trainer.method.student.backbone
    for key, value in ours.model.state_dict().items():
        if key == "pos_embed":  # the CLS slot removed (DINOv2-R: moved into the CLS token)
            assert value.shape[1] == 16
        elif key != "rope.periods":
            assert torch.equal(value, reference.model.state_dict()[key]), key
    assert "cls_token" not in ours.model.state_dict()
    trainer.fit()
