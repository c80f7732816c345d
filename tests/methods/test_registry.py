"""Every registered method: metadata, presets, and one CPU training step through the trainer."""

from __future__ import annotations

import math

import pytest

from densessl.methods.base import list_methods
from densessl.train.trainer import Trainer, read_metrics
from helpers import run_config

METHODS = sorted(list_methods())


@pytest.mark.parametrize("name", METHODS)
def test_method_metadata(name):
    cls = list_methods()[name]
    assert cls.description and cls.paper and cls.Params


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("preset", ["tiny", "paper", "smoke"])
def test_presets_resolve(name, preset):
    cfg = run_config(name, preset=preset)
    assert cfg.method == name


@pytest.mark.parametrize("name", METHODS)
def test_smoke_step(name, tmp_path):
    overrides = ["train.progress=false", "train.log_every=1", "optim.steps=2"]
    cfg = run_config(name, *overrides, preset="smoke")
    Trainer(cfg, tmp_path / name).fit()
    records = read_metrics(tmp_path / name)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
