"""Config: presets, overrides, unknown keys and wrong types."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from densessl.config.coerce import parse_overrides
from densessl.config.presets import build_run_config
from densessl.errors import ConfigError
from densessl.methods.base import get_method


@dataclass
class _Params:
    out_dim: int = 16
    temp: float = 0.1
    name: str | None = None


def test_defaults_and_to_dict_roundtrip(tmp_path):
    cfg = build_run_config("toy", _Params)
    assert cfg.params.out_dim == 16 and cfg.optim.lr == 5e-4
    tree = cfg.to_dict()
    assert tree["method"] == "toy" and tree["toy"]["out_dim"] == 16
    assert tree["views"]["global_scale"] == [0.4, 1.0]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    again = build_run_config("toy", _Params, str(path))
    assert again == cfg


def test_overrides_are_typed():
    cfg = build_run_config(
        "toy",
        _Params,
        overrides=[
            "optim.lr=1e-3",
            "toy.out_dim=32",
            "toy.temp=1",
            "views.global_scale=[0.3, 1]",
            "views.photometric.blur_prob=[0.5, 0.5, 0.5]",
            "optim.steps=null",
            "train.progress=false",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.params.out_dim == 32 and cfg.params.temp == 1.0
    assert cfg.views.global_scale == (0.3, 1.0)
    assert cfg.views.photometric.blur_prob == (0.5, 0.5, 0.5)
    assert cfg.optim.steps is None and cfg.train.progress is False


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'.*valid keys in 'optim':.*\blr\b"),
        ("toy.nope=1", r"unknown config key 'toy.nope'.*out_dim"),
        ("bogus.x=1", r"unknown config key 'bogus'"),
        ("optim.lr=fast", r"'optim.lr' expects a number"),
        ("toy.out_dim=1.5", r"'toy.out_dim' expects an integer"),
        ("train.progress=3", r"'train.progress' expects true/false"),
        ("views.global_scale=[1]", r"'views.global_scale' expects 2 values"),
        ("optim=3", r"'optim' is a section"),
        ("views.local_size=500", r"local_size"),
        ("optim.lr", r"key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        build_run_config("toy", _Params, overrides=[override])


def test_parse_overrides_nesting():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_presets_of_registered_methods_resolve():
    for preset in ("tiny", "paper"):
        cfg = build_run_config("dino", get_method("dino").Params, preset)
        assert cfg.method == "dino"
    with pytest.raises(ConfigError, match=r"available: .*tiny"):
        build_run_config("dino", get_method("dino").Params, "nope")


def test_preset_with_wrong_method(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("method: other\n")
    with pytest.raises(ConfigError, match="method 'other'"):
        build_run_config("toy", _Params, str(path))
