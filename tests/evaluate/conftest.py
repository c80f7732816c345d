"""Shared fixtures of the evaluation tests: a briefly trained DINO run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A 2-step DINO run on scenes with a small ViT (patch 8, 64-d, 2 blocks): seconds on a CPU.
TINY_RUN = [
    "data.scenes_num_images=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "train.progress=false",
    "train.precision=fp32",
    "optim.steps=2",
    "backbone.depth=2",
    "backbone.embed_dim=64",
    "backbone.num_heads=2",
    "dino.out_dim=128",
    "dino.hidden_dim=128",
    "dino.bottleneck_dim=64",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of a 2-step DINO training (config.yaml, checkpoints/last.pt)."""
    from densessl.config import build_run_config
    from densessl.methods import get_method
    from densessl.train import Trainer

    config = build_run_config("dino", get_method("dino").Params, "tiny", TINY_RUN)
    out = tmp_path_factory.mktemp("runs") / "dino-2steps"
    Trainer(config, out).fit()
    return out
