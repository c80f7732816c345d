"""Fixtures shared by the whole suite; plain helpers are in ``helpers.py`` beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# ``import helpers`` from any test folder (and from the driver scripts, which add it themselves).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TINY_RUN, run_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of a 2-step DINO training (``helpers.TINY_RUN``: config.yaml,
    checkpoints/last.pt); trained once per session, shared by every test that reads a run."""
    from densessl.train.trainer import Trainer

    out = tmp_path_factory.mktemp("runs") / "dino-2steps"
    Trainer(run_config("dino", *TINY_RUN), out).fit()
    return out


@pytest.fixture
def single_thread():
    """One intra-op thread: on 2 shared cores, 2 threads oversubscribe and run ~5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
