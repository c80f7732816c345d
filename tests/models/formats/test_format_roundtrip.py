"""Every released format round-trips through the CLI: detected from the file (or named with
``--format``) → ``densessl eval`` on scenes → ``densessl export`` → plain timm gives the
same patch features; ``--init`` reads them too. Wrong files exit 2 with one line."""

from __future__ import annotations

import json

import pytest
import torch

from densessl.cli import main
from densessl.export import timm_from_export
from densessl.models.formats.choice import use_format
from densessl.models.loading import load_backbone
from densessl.train.warm_start import backbone_weights
from helpers import write_flsl, write_leopart, write_loca, write_neco, write_selfpatch

WRITERS = {
    "selfpatch": (write_selfpatch, "selfpatch_vits16.pth"),
    "leopart": (write_leopart, "leopart_vits16.ckpt"),
    "loca": (write_loca, "loca_vsmall_imnet1k"),
    "flsl": (write_flsl, "flsl_vits16.pth"),
    "neco": (lambda path: write_neco(path, d=192, depth=1), "neco_on_dino_vit16_teacher.ckpt"),
}
FAST_CLUSTER = ["seeds=[0]", "n_init=1", "iters=5", "data.num_images=10"]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_load_evaluate_export_plain_timm(fmt, tmp_path, capsys):
    writer, name = WRITERS[fmt]
    path = tmp_path / name
    writer(path)
    result = tmp_path / "cluster.json"
    argv = ["eval", "cluster", "--backbone", str(path), "--out", str(result), "--no-progress"]
    assert main([*argv, *FAST_CLUSTER]) == 0
    record = json.loads(result.read_text())
    assert record["backbone"]["kind"] == fmt and record["summary"]
    assert 0.0 <= record["summary"][0]["miou"] <= 1.0
    export = tmp_path / "export"
    assert main(["export", str(path), "--out", str(export), "--format", fmt]) == 0
    meta = json.loads((export / "meta.json").read_text())
    assert meta["source"]["kind"] == fmt and meta["verified_max_abs_diff"] < 1e-5
    backbone = load_backbone(path)
    size = backbone.config.img_size  # plain timm resamples its own way at other sizes
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = backbone.tokens(x)[1].flatten(1, 2)
        model = timm_from_export(export)
        got = model.forward_features(x)[:, model.num_prefix_tokens :]
    assert model.num_prefix_tokens == int(backbone.has_cls_token)
    assert (got - expected).abs().max() < 1e-5
    assert "exported" in capsys.readouterr().out


def _flat(teacher: dict) -> dict:
    """A LOCA teacher tree's first LayerNorm bias under timm's key (others: as they are)."""
    if "encoderblock_0" in teacher:
        return {"blocks.0.norm1.bias": teacher["encoderblock_0"]["LayerNorm_0"]["bias"]}
    return teacher


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_init_reads_every_format(fmt, tmp_path):
    writer, name = WRITERS[fmt]
    path = tmp_path / name
    teacher = writer(path)
    weights = backbone_weights(path)  # what --init loads into student and teacher
    assert "blocks.0.attn.qkv.weight" in weights
    # the others have none (FLSL: unused)
    assert ("cls_token" in weights) == (fmt in ("leopart", "neco"))
    assert torch.equal(weights["blocks.0.norm1.bias"], _flat(teacher)["blocks.0.norm1.bias"])
    with use_format(fmt):  # --format NAME, set by the CLI around the command
        assert set(backbone_weights(path)) == set(weights)


def test_wrong_files_and_formats_exit_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "flsl.pth"
    write_flsl(path)
    base = ["eval", "cluster", "--backbone", str(path), *FAST_CLUSTER]
    assert main([*base, "--format", "leopart"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densessl: error:") and err.count("\n") == 1
    assert "--format leopart, but this does not look like a Leopart" in err and "FLSL" in err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x85not msgpack at all")
    assert main(["export", str(junk), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "junk.ckpt is not a readable LOCA Flax checkpoint" in err and "Traceback" not in err
    assert main(["export", str(path), "--out", str(tmp_path / "e"), "--format", "densessl"]) == 2
    assert "not a densessl training checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # argparse: invalid choice
        main([*base, "--format", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
