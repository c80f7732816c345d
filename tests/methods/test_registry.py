"""Every registered method: metadata, presets, and one CPU training step through the trainer."""

from __future__ import annotations

import math

import pytest

from densessl.methods.base import list_methods
from densessl.train.trainer import Trainer, read_metrics
from helpers import BACKBONE_FAMILIES, family_overrides, run_config

METHODS = sorted(list_methods())


@pytest.mark.parametrize("name", METHODS)
def test_method_metadata(name):
    cls = list_methods()[name]
    assert cls.description and cls.paper and cls.Params


#: ``(method, preset)`` for every preset a method ships (tiny, paper and smoke at least).
SHIPPED = [
    (name, path.stem)
    for name in METHODS
    for path in sorted(list_methods()[name].presets_dir().glob("*.yaml"))
]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_ships_the_shared_presets(name):
    assert {"tiny", "paper", "smoke"} <= {p for m, p in SHIPPED if m == name}


@pytest.mark.parametrize(("name", "preset"), SHIPPED)
def test_presets_resolve(name, preset):
    cfg = run_config(name, preset=preset)
    assert cfg.method == name
    size = cfg.backbone.patch_size
    assert cfg.views.global_size % size == 0 and cfg.views.local_size % size == 0


@pytest.mark.parametrize("family", list(BACKBONE_FAMILIES))
@pytest.mark.parametrize("name", METHODS)
def test_smoke_step(name, family, tmp_path):
    overrides = ["train.progress=false", "train.log_every=1", "optim.steps=2"]
    cfg = run_config(name, *overrides, *family_overrides(name, family), preset="smoke")
    assert cfg.backbone.family == family.removesuffix("_reg")
    Trainer(cfg, tmp_path / name).fit()
    records = read_metrics(tmp_path / name)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
