"""Every registered method: metadata, presets, and one CPU training step through the trainer."""

from __future__ import annotations

import math

import pytest

from densessl.config import build_run_config
from densessl.methods import list_methods
from densessl.train import Trainer, read_metrics

METHODS = sorted(list_methods())


@pytest.mark.parametrize("name", METHODS)
def test_method_metadata(name):
    cls = list_methods()[name]
    assert cls.description and cls.paper and cls.Params


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_presets_resolve(name, preset):
    cfg = build_run_config(name, list_methods()[name].Params, preset)
    assert cfg.method == name


@pytest.mark.parametrize("name", METHODS)
def test_smoke_step(name, tmp_path):
    cfg = build_run_config(
        name,
        list_methods()[name].Params,
        "tiny",
        [
            "data.scenes_num_images=40",
            "data.batch_size=4",
            "data.num_workers=0",
            "train.progress=false",
            "train.log_every=1",
            "optim.steps=2",
            "backbone.depth=1",
        ],
    )
    Trainer(cfg, tmp_path / name).fit()
    records = read_metrics(tmp_path / name)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
