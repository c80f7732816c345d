"""timm export: files, metadata, round trip through plain timm (offline), reading it back."""

from __future__ import annotations

import json
import socket

import pytest
import timm
import torch

from densessl.cli import main
from densessl.evaluation.features import build_extractor, from_run
from densessl.export import export_backbone, load_export, timm_from_export
from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import ViTBackbone


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return export_backbone(tiny_run, tmp_path_factory.mktemp("export") / "dino-tiny")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the export must load without network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_export_writes_timm_files_and_metadata(tiny_run, exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
    ]
    meta = json.loads((exported / "meta.json").read_text())
    assert timm.is_model(meta["architecture"]) and meta["architecture"].startswith("vit_tiny")
    kwargs = meta["timm_kwargs"]
    assert (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]) == (64, 2, 2)
    assert kwargs["img_size"] == meta["img_size"] == 64
    assert meta["method"] == "dino" and meta["step"] == 2 and meta["which"] == "teacher"
    assert meta["class_token"] is True and meta["patch_size"] == 8
    assert meta["densessl_version"] and meta["timm_version"] == timm.__version__
    assert meta["verified_max_abs_diff"] < 1e-5
    # The teacher (checkpoint key "backbone") was exported, not the student.
    from safetensors.torch import load_file

    weights = load_file(str(exported / "model.safetensors"))
    teacher = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)["backbone"]
    assert weights.keys() == {k.removeprefix("model.") for k in teacher}
    for key, value in teacher.items():
        assert torch.equal(weights[key.removeprefix("model.")], value), key
    assert not list(exported.glob(".*tmp"))  # no temporary files left behind


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_plain_timm_round_trip_gives_same_patch_features(tiny_run, exported, no_network, size):
    meta = json.loads((exported / "meta.json").read_text())
    model = timm.create_model(
        meta["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(exported / "model.safetensors")),
        **meta["timm_kwargs"],
    ).eval()
    assert tuple(model.patch_embed.patch_size) == (8, 8)
    ours = from_run(tiny_run).model
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours.tokens(x)[1]
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
    got = tokens.reshape(expected.shape)
    assert (got - expected).abs().max() < 1e-5
    assert torch.equal(timm_from_export(exported).pos_embed, model.pos_embed)
    # timm's own local-folder format (config.json) loads the same weights, where supported.
    from timm.models import _hub

    if hasattr(_hub, "load_model_config_from_path"):
        local = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
        with torch.no_grad():
            other = local.forward_features(x)[:, local.num_prefix_tokens :]
        assert (other.reshape(expected.shape) - expected).abs().max() < 1e-5


def test_eval_and_load_export_read_it_back(tiny_run, exported):
    backbone = load_export(exported)
    assert isinstance(backbone, ViTBackbone) and not backbone.training
    extractor = build_extractor(exported)  # what `densessl eval --backbone EXPORT` does
    assert extractor.source["kind"] == "export"
    x = torch.randn(1, 3, 64, 64)
    expected = from_run(tiny_run)(x)
    assert torch.allclose(extractor(x), expected, atol=1e-6)
    assert torch.allclose(backbone.tokens(x)[1], expected, atol=1e-6)


def test_cli_export(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "exported" in out and "plain timm matches" in out and "step 2" in out
    assert (tmp_path / "e" / "meta.json").is_file()


def test_missing_or_unfinished_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="nothing to export"):
        export_backbone(tmp_path / "no-such-run", tmp_path / "out")
    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to export" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method: dino\nbackbone: {arch: vit_tiny}\n")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_backbone(unfinished, tmp_path / "out")
    with pytest.raises(CheckpointError, match="cannot export"):
        export_backbone("random:vit_tiny", tmp_path / "out")


def test_failed_check_leaves_no_meta(tiny_run, tmp_path, monkeypatch):
    import densessl.export as export

    out = export_backbone(tiny_run, tmp_path / "e", verify=False)
    assert "verified_max_abs_diff" not in json.loads((out / "meta.json").read_text())
    monkeypatch.setattr(export, "_max_difference", lambda *args: 0.5)
    with pytest.raises(CheckpointError, match="export check failed"):
        export_backbone(tiny_run, out)
    assert not (out / "meta.json").exists()  # the stale meta.json is gone too


def test_export_of_an_official_dino_layout_checkpoint(tmp_path, no_network):
    from densessl.models.vit import BackboneConfig, build_backbone

    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_tiny", patch_size=16, img_size=32, depth=1)
    original = build_backbone(config).eval()
    path = tmp_path / "dino_deittiny16_like.pth"
    torch.save(original.model.state_dict(), path)  # DINO's backbone keys are timm's
    out = export_backbone(path, tmp_path / "export")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pos_interp"] == "dino" and meta["method"] is None
    assert meta["source"]["kind"] == "dino" and meta["verified_max_abs_diff"] < 1e-5
    x = torch.randn(1, 3, 32, 32)  # at img_size plain timm equals DINO's resampling
    with torch.no_grad():
        expected = original.tokens(x)[1]
        model = timm_from_export(out)
        got = model.forward_features(x)[:, 1:].reshape(expected.shape)
    assert (got - expected).abs().max() < 1e-5
