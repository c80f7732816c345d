"""Frozen patch-feature extractors from every source: runs, checkpoints, DINO files, exports,
timm models and random init; and clear errors for files that are none of these."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

from densessl.errors import ConfigError
from densessl.evaluation.features import (
    PatchFeatureExtractor,
    build_extractor,
    from_checkpoint,
    from_export,
    from_run,
    from_timm,
    random_init,
)
from densessl.io.checkpoint import CheckpointError
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig, build_backbone
from helpers import official_layout_shapes


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _state(run):
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def dino_layout(embed_dim: int, depth: int, patch: int, img: int, seed: int) -> dict:
    """Weights in the official DINO ViT key layout, random values."""
    g = torch.Generator().manual_seed(seed)
    shapes = official_layout_shapes(embed_dim, depth, patch, img)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in sorted(shapes.items())}


# ---------------------------------------------------------------- densessl runs and checkpoints
def test_run_directory_gives_the_frozen_teacher(tiny_run):
    extractor = from_run(tiny_run)
    state = _state(tiny_run)
    own = extractor.model.model.state_dict()
    assert set(own) == {k.removeprefix("model.") for k in state["backbone"]}
    for key, value in state["backbone"].items():
        assert torch.equal(own[key.removeprefix("model.")], value), key
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())["backbone"]
    assert extractor.model.config == BackboneConfig(**saved)
    assert extractor.source["kind"] == "run" and extractor.source["step"] == 2
    assert extractor.source["method"] == "dino" and extractor.source["which"] == "teacher"
    assert extractor.patch_size == 8 and "step 2" in extractor.description
    # Frozen: eval mode whatever is asked, no gradients, any multiple of the patch size.
    extractor.train()
    assert not extractor.training and not extractor.model.training
    assert not any(p.requires_grad for p in extractor.parameters())
    patches = extractor(torch.randn(2, 3, 48, 96, requires_grad=True))
    assert patches.shape == (2, 6, 12, 64) and not patches.requires_grad


def test_student_is_found_in_the_method_state(tiny_run):
    teacher, student = from_run(tiny_run), from_run(tiny_run, which="student")
    state = _state(tiny_run)
    expected = state["model"]["student.backbone.model.blocks.0.attn.qkv.weight"]
    assert torch.equal(student.model.model.blocks[0].attn.qkv.weight, expected)
    x = _images()
    assert not torch.allclose(teacher(x), student(x))  # two steps moved the student
    # A checkpoint without a student backbone says so.
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("student.")}
    path = tiny_run.parent / "no_student.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"no_student\.pt.*cannot find the student"):
        from_checkpoint(path, which="student")


def test_checkpoint_file_equals_the_run_directory(tiny_run):
    from_dir = build_extractor(tiny_run)
    from_file = build_extractor(tiny_run / "checkpoints" / "last.pt")
    assert from_file.source["kind"] == "checkpoint" and from_file.source["step"] == 2
    x = _images()
    torch.testing.assert_close(from_file(x), from_dir(x), rtol=0, atol=0)


def test_extractor_follows_its_device_and_dtype(tiny_run):
    extractor = from_run(tiny_run).to(torch.float64)
    assert extractor(_images()).dtype == torch.float64  # float32 input moved to the module


# ---------------------------------------------------------------- official DINO checkpoints
def test_official_dino_backbone_file_is_inferred(tmp_path):
    weights = dino_layout(192, 2, 8, 64, seed=0)
    path = tmp_path / "dino_tiny8_pretrain.pth"
    torch.save(weights, path)
    extractor = build_extractor(path)
    assert extractor.source["kind"] == "dino" and extractor.patch_size == 8
    config = extractor.model.config
    assert (config.arch, config.resolved_depth, config.pos_interp) == ("vit_tiny", 2, "dino")
    assert torch.equal(
        extractor.model.model.blocks[1].mlp.fc2.weight, weights["blocks.1.mlp.fc2.weight"]
    )
    x = _images(size=48)
    torch.testing.assert_close(extractor(x), load_backbone(path).tokens(x)[1])


def test_official_training_checkpoint_with_user_arch(tmp_path):
    teacher, student = dino_layout(192, 12, 16, 224, 0), dino_layout(192, 12, 16, 224, 1)
    head = {"head.mlp.0.weight": torch.zeros(8, 4), "head.last_layer.weight_g": torch.ones(8, 1)}
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
            "student": {f"module.backbone.{k}": v for k, v in student.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3,
        },
        path,
    )
    a = build_extractor(path, arch="vit_tiny", patch_size=16)
    b = build_extractor(path, arch="vit_tiny", patch_size=16, which="student")
    assert torch.equal(a.model.model.pos_embed, teacher["pos_embed"])
    assert torch.equal(b.model.model.pos_embed, student["pos_embed"])
    assert a.model.config.pos_interp == "dino" and a(_images(1)).shape == (1, 2, 2, 192)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth.*shape mismatches.*patch_embed"):
        build_extractor(path, arch="vit_tiny", patch_size=8)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth.*patch size 16, not 8"):
        build_extractor(path, patch_size=8)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("text", "not a loadable PyTorch checkpoint"),
        ({"foo": torch.zeros(2)}, r"missing \['patch_embed.proj.weight'"),
        ({"student": {"module.backbone.pos_embed": torch.zeros(1)}}, "no 'teacher' network"),
    ],
)
def test_wrong_files_give_errors_naming_them(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as info:
        build_extractor(path)
    assert str(path) in str(info.value)


def test_wrong_folders_and_names(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="not found; expected a densessl run directory"):
        build_extractor(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a densessl run directory"):
        build_extractor(tmp_path / "empty")
    run = tmp_path / "fresh_run"
    run.mkdir()
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match=r"fresh_run has no checkpoint last\.pt"):
        build_extractor(run)
    (run / "config.yaml").write_text("method: dino\n")
    with pytest.raises(CheckpointError, match="no 'backbone' section"):
        build_extractor(run)
    with pytest.raises(ConfigError, match="which must be"):
        build_extractor(tiny_run, which="ema")


# ---------------------------------------------------------------- exports, timm, random init
def test_exported_backbone_round_trip(tmp_path):
    from safetensors.torch import save_file

    config = BackboneConfig(arch="vit_tiny", embed_dim=48, depth=1, num_heads=2, patch_size=8)
    source = build_backbone(config).eval()
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(source.model.state_dict(), str(folder / "model.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"backbone": vars(config), "method": "dino"}))
    x = _images()
    for given in (folder, folder / "model.safetensors"):
        extractor = build_extractor(given)
        assert extractor.source["kind"] == "export"
        torch.testing.assert_close(extractor(x), source.tokens(x)[1], rtol=0, atol=0)
    (folder / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*meta\.json"):
        from_export(folder / "model.safetensors")


def test_timm_model_with_local_weights(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True).eval()
    path = tmp_path / "vit_tiny.pth"
    torch.save(model.state_dict(), path)  # classifier head included: dropped on load
    extractor = build_extractor("timm:vit_tiny_patch16_224", weights=path)
    assert extractor.patch_size == 16 and extractor.source["kind"] == "timm"
    x = _images(size=64)
    with torch.no_grad():
        expected = model.forward_features(x)[:, 1:].reshape(2, 4, 4, 192)
    torch.testing.assert_close(extractor(x), expected)
    with pytest.raises(ConfigError, match="unknown timm model 'vit_tiniest"):
        from_timm("vit_tiniest_patch16_224", path)
    with pytest.raises(ConfigError, match="needs a local weights file"):
        build_extractor("timm:vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match=r"vit_tiny\.pth does not load into timm model"):
        from_timm("vit_tiny_patch16_224", path, depth=2)  # 12 blocks in the file


def test_random_init_is_seeded_and_copies_a_run_architecture(tiny_run):
    x = _images()
    spec = BackboneConfig(arch="vit_tiny", embed_dim=32, depth=1, num_heads=2, patch_size=8)
    a, b = random_init(spec), random_init(spec)
    assert isinstance(a, PatchFeatureExtractor) and a.source["kind"] == "random"
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.allclose(a(x), random_init(spec, seed=1)(x))
    like_run = build_extractor(f"random:{tiny_run}", seed=3)
    assert like_run.model.config == from_run(tiny_run).model.config
    assert like_run.source["seed"] == 3 and like_run.source["spec"] == str(tiny_run)
    by_name = build_extractor("random", arch="vit_tiny", patch_size=8)
    assert by_name.patch_size == 8 and by_name.model.config.resolved_depth == 12
    with pytest.raises(ConfigError, match="random init needs an arch"):
        random_init("vit_colossal")
