"""Untrusted files: checkpoints are loaded with ``weights_only=True`` everywhere, so a
crafted pickle never runs code — whether it is a resume checkpoint, a warm start or a
backbone file. Exports are safetensors.

Already covered elsewhere: ``tests/io/test_checkpoint.py::test_pickled_code_is_refused``
(``load_file``), ``tests/test_export.py::test_export_writes_timm_files_and_metadata``
(safetensors + JSON only).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest

import densessl
from densessl.io.checkpoint import CheckpointError
from densessl.train.trainer import Trainer
from helpers import robust_config

SRC = Path(densessl.__file__).parent


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": _Evil(marker)}, protocol=2))
    return path


def test_every_torch_load_in_the_library_is_weights_only():
    calls = []
    for file in SRC.rglob("*.py"):
        text = file.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            end = text.find(")\n", match.end())
            calls.append((file.name, text[match.start() : end + 1]))
    assert calls, "no torch.load found: the scan is broken"
    unsafe = [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert unsafe == []


def test_crafted_resume_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    _crafted(tmp_path / "run" / "checkpoints" / "last.pt", marker)
    trainer = Trainer(robust_config("optim.steps=2"), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"last\.pt is not a loadable"):
        trainer.fit()
    assert not marker.exists()


def test_crafted_warm_start_file_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "weights.pth", marker)
    with pytest.raises(CheckpointError, match=r"weights\.pth"):
        Trainer(robust_config("optim.steps=2"), tmp_path / "run", init=str(evil))
    assert not marker.exists()


def test_crafted_backbone_for_evaluation_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "backbone.pth", marker)
    with pytest.raises(CheckpointError, match=r"backbone\.pth"):
        densessl.evaluate("cluster", backbone=str(evil), verbose=False, progress=False)
    assert not marker.exists()
