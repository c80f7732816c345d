"""What a user types is read as typed: path options and string keys stay strings, YAML's
traps (aliases, duplicate keys, deep nesting) end as a one-line error, NaN and inf are
refused for every float key, and no message shows an unbounded value.

See also ``test_robust_config.py`` (impossible values) and ``test_robust_validation.py``
(crop sizes, normalisation, unknown names, file names in messages).
"""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

import densessl.data.scenes.dataset as scenes_module
import densessl.demo as demo_module
import densessl.export as export_module
import densessl.train.trainer as trainer_module
import densessl.viz.panels as panels_module
from densessl.cli import main
from densessl.config.coerce import build_dataclass, coerce_value, parse_overrides
from densessl.config.presets import build_run_config
from densessl.config.schema import RunConfig
from densessl.errors import ConfigError
from densessl.evaluation.api import evaluate
from densessl.evaluation.registry import list_protocols
from densessl.evaluation.unsupervised.settings import UnsupervisedProtocol
from densessl.methods.base import get_method, list_methods
from helpers import ROBUST_RUN as TINY
from helpers import robust_config as tiny_config

# Texts YAML would read as something else: a comment, int, bool, null, date, list, alias.
TRICKY_TEXTS = [
    "photos #2",
    "2024",
    "yes",
    "no",
    "null",
    "~",
    "1e3",
    "2024-01-01",
    "[a, b]",
    "{a: 1}",
    "*alias",
    "&anchor x",
    "a: b",
    " spaced ",
    "'quoted' tail",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_string_keys_get_the_text_as_typed(text):
    assert tiny_config(f"data.path={text}").data.path == text


def test_quotes_are_kept_and_null_unsets_an_optional_key():
    from densessl.config.coerce import parse_override_items

    assert tiny_config("data.path='my photos'").data.path == "'my photos'"
    tree = parse_override_items(["a=null", "b='null'", "c=2024", "d=[C, 100]", "e=['a,b', 2]"])
    assert coerce_value(tree["a"], str | None, "a") is None
    assert coerce_value(tree["b"], str | None, "b") == "'null'"
    assert coerce_value(tree["c"], int | str, "c") == 2024
    assert coerce_value(tree["d"], int | str | tuple[int | str, ...], "d") == ("C", 100)
    assert coerce_value(tree["e"], tuple[str, ...], "e") == ("a,b", "2")  # list items: YAML
    settings = build_dataclass(
        UnsupervisedProtocol, parse_override_items(["attention_backbone=2024"]), "unsupervised"
    )
    assert settings.attention_backbone == "2024"


def test_parse_overrides_still_gives_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=yes", "d=[1, 2]"]) == {
        "a": {"b": 1, "c": True},
        "d": [1, 2],
    }


class _Stop(Exception):
    """Raised by the stand-ins below once they have seen their arguments."""


@pytest.fixture
def seen(monkeypatch):
    """Replace every command's API entry point by a recorder of its path arguments."""
    got: dict[str, object] = {}

    class _Trainer:
        def __init__(self, config, out, init=None, **_):
            got.update(data=config.data.path, out=str(out), init=init)
            raise _Stop

    def record(name):
        def stand_in(*args, **kwargs):
            got[name] = (args, kwargs)
            raise _Stop

        return stand_in

    monkeypatch.setattr(trainer_module, "Trainer", _Trainer)
    monkeypatch.setattr("densessl.evaluation.api.evaluate", record("eval"))
    monkeypatch.setattr(panels_module, "visualize", record("viz"))
    monkeypatch.setattr(export_module, "export_backbone", record("export"))
    monkeypatch.setattr(scenes_module, "write_scenes", record("scenes"))
    monkeypatch.setattr(demo_module, "run_demo", record("demo"))
    return got


@pytest.mark.parametrize("text", ["photos #2", "2024", "yes", "null", "~x", "a\nb"])
def test_every_path_option_reaches_the_api_verbatim(seen, text):
    """pretrain --data/--out/--init, eval, viz, export, scenes, demo: a path is a string."""
    with pytest.raises(_Stop):
        main(["pretrain", "--data", text, "--out", f"{text}-out", "--init", f"{text}.pth"])
    assert seen == {"data": text, "out": f"{text}-out", "init": f"{text}.pth"}
    with pytest.raises(_Stop):
        trainer_module.pretrain(data=text, out="o")  # the Python API, same override path
    assert seen["data"] == text
    eval_args = ["--backbone", f"{text}.pt", "--root", text, "--out", f"{text}.json"]
    with pytest.raises(_Stop):
        main(["eval", "cluster", *eval_args, "--weights", f"{text}.w"])
    kwargs = seen["eval"][1]
    assert (kwargs["backbone"], kwargs["root"], kwargs["out"]) == (
        f"{text}.pt",
        text,
        f"{text}.json",
    )
    assert kwargs["weights"] == f"{text}.w"
    with pytest.raises(_Stop):
        main(["viz", "--backbone", text, "--images", text, f"{text}2", "--out", text])
    args = seen["viz"][0]
    assert args == (text, [text, f"{text}2"], text)
    with pytest.raises(_Stop):
        main(["export", text, "--out", f"{text}-export"])
    assert seen["export"][0] == (text, f"{text}-export")
    with pytest.raises(_Stop):
        main(["scenes", "--out", text, "--num-images", "2"])
    assert seen["scenes"][0][0] == text
    with pytest.raises(_Stop):
        main(["demo", "--out", text])
    assert str(seen["demo"][0][0]) == text


# -- YAML traps ---------------------------------------------------------------------------


def _bomb(levels: int = 4) -> str:
    """A small "billion laughs": 9**levels strings from a few lines (never a big one here)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines)


def test_aliases_in_a_preset_are_refused_with_a_short_message(tmp_path):
    preset = tmp_path / "bomb.yaml"
    preset.write_text(_bomb() + "\nviews:\n  ratio: *l3\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: refused YAML: line 1: .*aliases") as err:
        build_run_config("dino", get_method("dino").Params, str(preset))
    assert len(str(err.value)) < 300


def test_aliases_in_an_override_are_refused():
    with pytest.raises(ConfigError, match=r"config key 'optim\.betas': .*aliases"):
        tiny_config("optim.betas=[&b 0.9, *b]")
    with pytest.raises(ConfigError, match=r"config key 'views\.ratio': .*aliases"):
        tiny_config("views.ratio=[&r 0.75, *r]")


def test_a_key_given_twice_in_a_preset_is_refused(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text(
        "extends: tiny\noptim:\n  lr: 0.1\ndata:\n  batch_size: 4\noptim:\n  epochs: 3\n"
    )
    with pytest.raises(
        ConfigError, match=r"twice\.yaml: .*line 6: key 'optim' is given twice.*line 2"
    ):
        build_run_config("dino", get_method("dino").Params, str(preset))
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice"):
        tiny_config("optim={lr: 0.1, lr: 0.2}")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("optim: " + "[" * 20000 + "]" * 20000, "nested too deeply"),
        ("data:\n  path: 2024-02-30\n", "not valid YAML: day is out of range"),
        ("optim:\n  lr: [1\n", r"not valid YAML: line 3, column 1: expected ','"),
        ("optim:\n  steps: " + "1" * 5000 + "\n", "not valid YAML: .*digits"),
    ],
)
def test_unreadable_presets_end_as_config_errors(tmp_path, text, match):
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        build_run_config("dino", get_method("dino").Params, str(preset))
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize(
    "override",
    [
        "data.on_corrupt=" + "x" * 100_000,
        "nope" + "y" * 5000 + "=1",
        "optim.lr=" + "9" * 50_000,
        "optim.steps=" + "1" * 5000,
        "views.ratio=[" + ",".join(["0.5"] * 20_000) + "]",
        "x" * 100_000,
    ],
)
def test_no_message_shows_an_unbounded_value(override):
    with pytest.raises(ConfigError) as err:
        tiny_config(override)
    assert len(str(err.value)) < 400, str(err.value)[:500]


def test_eval_messages_are_bounded_too():
    with pytest.raises(ConfigError) as err:
        evaluate("cluster", backbone="random:vit_tiny", overrides=["backend=" + "z" * 50_000])
    assert "backend" in str(err.value) and len(str(err.value)) < 400


# -- NaN and inf ----------------------------------------------------------------------------


def _has_float(tp: typing.Any) -> bool:
    return tp is float or any(_has_float(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _float_keys(cls: type, prefix: str) -> dict[str, typing.Any]:
    """Every key of dataclass ``cls`` that holds floats (alone or in a tuple), nested."""
    keys = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys |= _float_keys(tp, f"{prefix}.{name}")
        elif _has_float(tp):
            keys[f"{prefix}.{name}"] = tp
    return keys


RUN_FLOAT_KEYS = {
    k: tp
    for name in RunConfig.SECTIONS
    for k, tp in _float_keys(typing.get_type_hints(RunConfig)[name], name).items()
}


def _value_for(tp: typing.Any, bad: str) -> str:
    """``bad`` in the shape of ``tp``: a scalar, or the first item of a list."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    shaped = next((o for o in options if typing.get_origin(o) in (tuple, list)), None)
    if shaped is None:
        return bad
    args = typing.get_args(shaped)
    rest = [] if len(args) < 2 or args[1] is Ellipsis else ["1.0"] * (len(args) - 1)
    return "[" + ", ".join([bad, *rest]) + "]"


@pytest.mark.parametrize("bad", ["nan", ".nan", "inf", "-inf", ".inf", "1e999"])
def test_nan_and_inf_are_refused_for_every_float_key_of_every_method(bad):
    missed = []
    for method, cls in list_methods().items():
        base = [o for o in TINY if o.split(".")[0] in (*RunConfig.SECTIONS, method)]
        for key, tp in (RUN_FLOAT_KEYS | _float_keys(cls.Params, method)).items():
            override = f"{key}={_value_for(tp, bad)}"
            try:
                build_run_config(method, cls.Params, "tiny", [*base, override])
                missed.append(override)
            except ConfigError as err:
                if key not in str(err) or "finite" not in str(err):
                    missed.append(f"{override}: {err}")
    assert not missed
    assert "optim.clip_grad" in RUN_FLOAT_KEYS and "optim.warmup_epochs" in RUN_FLOAT_KEYS


def _setting_float_keys(cls: type) -> dict[str, typing.Any]:
    from densessl.evaluation.checks import plain_hint

    hints = typing.get_type_hints(cls)
    return {name: plain_hint(tp) for name, tp in hints.items() if _has_float(tp)}


@pytest.mark.parametrize("protocol", [p for p, r in list_protocols().items() if p != "cluster"])
def test_nan_and_inf_are_refused_for_every_float_setting(protocol):
    keys = _setting_float_keys(list_protocols()[protocol].settings)
    assert keys
    for key, tp in keys.items():
        for bad in ("nan", "inf"):
            with pytest.raises(ConfigError, match=rf"'{protocol}\.{key}' must be a finite number"):
                evaluate(
                    protocol, backbone="random:vit_tiny", overrides=[f"{key}={_value_for(tp, bad)}"]
                )
        with pytest.raises(ConfigError, match="finite"):  # the Python keyword form too
            value = float("nan") if _value_for(tp, "x") == "x" else [float("nan"), 1.0]
            evaluate(protocol, backbone="random:vit_tiny", **{key: value})


def test_the_cluster_protocol_has_no_float_setting():
    assert not _setting_float_keys(list_protocols()["cluster"].settings)


def test_eval_dataset_options_are_typed_like_settings():
    """``data.*`` options follow the dataset class's signature: finite numbers, plain text."""
    with pytest.raises(ConfigError, match=r"'data\.val_fraction' must be a finite number"):
        evaluate("cluster", backbone="random:vit_tiny", overrides=["data.val_fraction=nan"])
    with pytest.raises(ConfigError, match=r"'data\.num_images' expects an integer, got 'yes'"):
        evaluate("cluster", backbone="random:vit_tiny", overrides=["data.num_images=yes"])
    with pytest.raises(ConfigError, match=r"class_set must be one of .* got '2024'"):
        evaluate("cluster", backbone="random:vit_tiny", overrides=["data.class_set=2024"])
