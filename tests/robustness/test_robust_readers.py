"""Readers of a run take its architecture from the checkpoint; ``export``, ``eval`` and
``viz`` never write over a file densessl did not write."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation.features import build_extractor
from densessl.evaluation.result_file import check_result_path, write_result
from densessl.export import export_backbone
from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.train.trainer import Trainer
from densessl.viz.panels import visualize
from helpers import robust_config as tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run (2 heads) whose resume with 4 heads was refused."""
    out = tmp_path_factory.mktemp("runs") / "run"
    Trainer(tiny_config("optim.steps=4"), out).fit(stop_at=2)
    with pytest.raises(ConfigError, match=r"backbone\.num_heads"):
        Trainer(tiny_config("optim.steps=4", "backbone.num_heads=4"), out).fit()
    return out


def test_a_refused_resume_leaves_the_architecture_readers_see(run):
    assert yaml.safe_load((run / "config.yaml").read_text())["backbone"]["num_heads"] == 2
    assert build_extractor(run).model.config.num_heads == 2


def test_a_config_yaml_that_disagrees_with_the_checkpoint_is_refused(run, tmp_path, capsys):
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "checkpoints").mkdir()
    (edited / "checkpoints" / "last.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["backbone"]["num_heads"] = 4  # same weight shapes, other features
    (edited / "config.yaml").write_text(yaml.safe_dump(tree))
    last = edited / "checkpoints" / "last.pt"
    expected = (
        f"{edited / 'config.yaml'} disagrees with the checkpoint {last} on the architecture "
        "(backbone.num_heads: 4 in config.yaml, 2 in the checkpoint)"
    )
    for read in (
        lambda: build_extractor(edited),  # eval
        lambda: build_extractor(f"random:{edited}"),
        lambda: export_backbone(edited, tmp_path / "export"),
        lambda: visualize(edited, [tmp_path / "x.png"], tmp_path / "viz"),
        lambda: Trainer(tiny_config("optim.steps=2"), tmp_path / "warm", init=str(edited)),
    ):
        Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
        with pytest.raises(CheckpointError) as info:
            read()
        assert expected in str(info.value)
    assert not (tmp_path / "export").exists() and not (tmp_path / "viz").exists()
    assert main(["export", str(edited), "--out", str(tmp_path / "export")]) == 2
    assert "backbone.num_heads: 4 in config.yaml" in capsys.readouterr().err
    # Without config.yaml the checkpoint alone describes the run.
    (edited / "config.yaml").unlink()
    assert build_extractor(edited).model.config.num_heads == 2


def test_export_refuses_a_folder_of_files_it_did_not_write(run, tmp_path, capsys):
    theirs = tmp_path / "hf-model"
    theirs.mkdir()
    save_file({"w": torch.zeros(2)}, str(theirs / "model.safetensors"))
    (theirs / "config.json").write_text('{"model_type": "bert"}')
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    assert main(["export", str(run), "--out", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert f"export --out {theirs} holds files that are not a densessl export" in err
    assert "config.json, model.safetensors" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"todo\.txt"):
        export_backbone(run, notes, verify=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_backbone(run, tmp_path / "file", verify=False)
    # An earlier export is replaced, also one stopped before its meta.json was written.
    out = export_backbone(run, tmp_path / "export", verify=False)
    (out / "meta.json").unlink()
    (out / "readme.md").write_text("mine")
    export_backbone(run, out, verify=False)
    assert (out / "meta.json").is_file() and (out / "readme.md").read_text() == "mine"


def test_eval_out_never_overwrites_a_file_it_did_not_write(tmp_path):
    import densessl

    theirs = tmp_path / "scores.json"
    theirs.write_text('{"my": "numbers"}\n')
    with pytest.raises(ConfigError, match="is not a densessl evaluation result"):
        densessl.evaluate(
            "cluster", backbone="random:vit_tiny", out=theirs, verbose=False, progress=False
        )
    assert theirs.read_text() == '{"my": "numbers"}\n'
    with pytest.raises(ConfigError, match="is a folder"):
        check_result_path(tmp_path)
    ours = tmp_path / "eval" / "cluster.json"
    write_result(ours, {"protocol": "cluster", "results": {}, "densessl_version": "0"})
    assert check_result_path(ours) == ours  # an earlier result may be replaced
    assert json.loads(ours.read_text())["protocol"] == "cluster"


def test_viz_never_overwrites_a_png_it_did_not_write(tmp_path):
    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_tiny", depth=1, embed_dim=32, num_heads=2, patch_size=8)
    backbone = build_backbone(config).eval()
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(images / "a.png")
    out = tmp_path / "viz"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "000_a.png")  # the user's own picture
    before = (out / "000_a.png").read_bytes()
    with pytest.raises(ConfigError, match=r"000_a\.png exists and was not written by densessl"):
        visualize(backbone, images, out, size=32, clusters=2, progress=False)
    assert (out / "000_a.png").read_bytes() == before
    (out / "000_a.png").unlink()
    visualize(backbone, images, out, size=32, clusters=2, progress=False)
    visualize(backbone, images, out, size=32, clusters=2, progress=False)  # its own: replaced
    with pytest.raises(ConfigError, match="is a file"):
        visualize(backbone, images, images / "a.png", size=32, clusters=2, progress=False)


def test_a_config_yaml_with_yaml_aliases_is_refused_not_expanded(tmp_path):
    from densessl.io.checkpoint import CheckpointError
    from densessl.models.run_arch import yaml_backbone_config

    bomb = tmp_path / "config.yaml"
    bomb.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\nbackbone: {arch: vit_tiny}\n')
    with pytest.raises(CheckpointError, match="aliases"):
        yaml_backbone_config(bomb)
