"""Warm starts (densessl.train.warm_start): ``Trainer(..., init=RUN)`` loads a run's teacher
backbone into a fresh run, and refuses a different architecture or a run without checkpoints."""

import pytest
import torch

from densessl.io.checkpoint import CheckpointError
from densessl.train.trainer import Trainer
from helpers import CPU, run_config


def _config(*extra: str):
    """A 2-step run of DINO's ``smoke`` preset (1 block of 32-d)."""
    return run_config("dino", *CPU, "optim.steps=2", *extra, preset="smoke")


def test_init_loads_the_source_teacher_into_student_and_teacher(tmp_path):
    source = Trainer(_config(), tmp_path / "source")
    source.fit()
    expected = source.method.teacher_backbone().state_dict()
    fresh = Trainer(_config("train.seed=5"), tmp_path / "fresh", init=str(tmp_path / "source"))
    for backbone in (fresh.method.student_backbone(), fresh.method.teacher_backbone()):
        got = backbone.state_dict()
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
    assert fresh.step == 0  # weights only: a new run, not a resume


def test_init_with_a_different_architecture_names_the_file(tmp_path):
    Trainer(_config(), tmp_path / "source").fit()
    with pytest.raises(CheckpointError, match="source"):
        Trainer(_config("backbone.depth=3"), tmp_path / "other", init=str(tmp_path / "source"))
    with pytest.raises(CheckpointError, match="without checkpoints"):
        Trainer(_config(), tmp_path / "x", init=str(tmp_path))
