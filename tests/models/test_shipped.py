"""The backbone shipped in the package: it loads, matches its recorded checksum, warm-starts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation.features import build_extractor
from densessl.io.checkpoint import CheckpointError
from densessl.models import shipped
from densessl.models.shipped import SHIPPED, sha256_of, shipped_folder
from densessl.train.warm_start import backbone_weights

NAME = "miniature-base"


def test_the_shipped_base_matches_its_checksum_and_loads():
    folder = shipped_folder(NAME)
    weights = folder / "model.safetensors"
    assert sha256_of(weights) == SHIPPED[NAME].sha256
    assert weights.stat().st_size <= 5 * 2**20  # the budget for weights in the repo
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["method"] == "dino" and meta["reproduce"] == SHIPPED[NAME].reproduce
    extractor = build_extractor(f"densessl:{NAME}")
    assert extractor.source["kind"] == "export"
    with torch.no_grad():
        patches = extractor(torch.zeros(2, 3, 96, 96))
    assert patches.shape == (2, 12, 12, 128) and torch.isfinite(patches).all()
    # The curve it was shipped with meets the base's thresholds (issue #31).
    first, last = meta["curve"][0], meta["curve"][-1]
    assert last["step"] == meta["step"] and last["class_eta2"] >= 0.05
    assert last["linear"] >= first["linear"] + 10


def test_warm_start_takes_the_shipped_weights():
    weights = backbone_weights(f"densessl:{NAME}")
    from safetensors.torch import load_file

    on_disk = load_file(str(shipped_folder(NAME) / "model.safetensors"))
    assert set(weights) == set(on_disk)
    assert all(torch.equal(weights[k], on_disk[k]) for k in on_disk)


def test_a_damaged_copy_or_an_unknown_name_is_refused(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "shipped" / SHIPPED[NAME].folder
    shutil.copytree(shipped_folder(NAME), copy)
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    monkeypatch.setattr(shipped, "__file__", str(tmp_path / "shipped.py"))
    with pytest.raises(CheckpointError, match="not the recorded"):
        shipped_folder(NAME)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="densessl:miniature-base"):
        shipped_folder("nope")
    assert main(["eval", "linear", "--backbone", "densessl:nope"]) == 2
    assert "unknown shipped backbone densessl:nope" in capsys.readouterr().err
