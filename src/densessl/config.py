"""Typed run configuration: dataclasses, YAML presets and ``key=value`` overrides.

A run is described by :class:`RunConfig`: the method name, one dataclass per component
(``backbone``, ``views``, ``data``, ``optim``, ``train``) and the method's own
hyper-parameter dataclass stored under the method's name (e.g. ``dino.out_dim``). Values are
merged in this order: dataclass defaults → preset YAML (``configs/<method>/<preset>.yaml``)
→ ``key=value`` overrides. An unknown key or a value of the wrong type is an error that
names the key and lists the valid ones, before anything is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from densessl.backbone import BackboneConfig
from densessl.views import ViewsConfig


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


@dataclass
class DataConfig:
    """Where the training images come from.

    Attributes:
        path: ``"scenes"`` (synthetic scenes generated on the fly), a folder of images
            (searched recursively), or a folder written by ``densessl scenes``.
        scenes_num_images / scenes_size / scenes_seed / scenes_class_set: the on-the-fly
            scenes (``scenes_class_set``: ``"shared-cues"`` or ``"distinct-cues"``, see
            :class:`densessl.data.scenes.SceneConfig`).
        batch_size: images per process and step (the global batch is this x processes).
        num_workers: data-loader worker processes (0 = load in the main process).
        on_corrupt: ``"skip"`` (count and warn) or ``"raise"`` for undecodable images.
        min_size: upscale images whose shorter side is smaller (0 = never).
    """

    path: str = "scenes"
    scenes_num_images: int = 2000
    scenes_size: int = 96
    scenes_seed: int = 0
    scenes_class_set: str = "shared-cues"
    batch_size: int = 64
    num_workers: int = 2
    on_corrupt: str = "skip"
    min_size: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is empty; give a folder of images, or 'scenes'")
        _check_min("data", self, batch_size=1, num_workers=0, min_size=0)
        _check_min("data", self, scenes_num_images=1, scenes_size=1)
        if self.on_corrupt not in ("skip", "raise"):
            raise ValueError(f"data.on_corrupt must be 'skip' or 'raise', got {self.on_corrupt!r}")


@dataclass
class OptimConfig:
    """Optimisation recipe (DINO's defaults).

    Attributes:
        epochs: training length in epochs (ignored when ``steps`` is set).
        steps: training length in optimiser steps; overrides ``epochs``.
        lr: base learning rate; the peak is ``lr * global_batch / 256`` when
            ``scale_lr_with_batch`` (DINO's linear scaling rule).
        min_lr: final learning rate of the cosine schedule.
        warmup_epochs: linear warm-up length (fractional epochs allowed).
        weight_decay / weight_decay_end: cosine weight-decay schedule (weights only; biases
            and norms get none).
        clip_grad: per-parameter gradient-norm clip as in the official DINO code (0 = off).
        freeze_last_layer: epochs during which parameters named ``last_layer`` get no update.
        momentum_teacher / momentum_teacher_end: cosine schedule of the teacher EMA.
        betas: AdamW betas.
    """

    epochs: int = 100
    steps: int | None = None
    lr: float = 5e-4
    scale_lr_with_batch: bool = True
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer: float = 1.0
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(
                f"optim.lr must be > 0, got {self.lr} (the base learning rate; the peak is "
                "lr x global batch / 256 when optim.scale_lr_with_batch)"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"optim.steps must be >= 1 (or null to use epochs), got {self.steps}")
        _check_min("optim", self, epochs=1)
        _check_min("optim", self, min_lr=0, warmup_epochs=0, weight_decay=0)
        _check_min("optim", self, weight_decay_end=0, clip_grad=0, freeze_last_layer=0)
        for name in ("momentum_teacher", "momentum_teacher_end"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"optim.{name} must be in [0, 1], got {value}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")


@dataclass
class TrainConfig:
    """Loop, precision, logging and checkpoint settings.

    Attributes:
        seed: seeds model init, data order and augmentation.
        precision: ``auto`` (bf16 autocast on GPU; on CPU bf16 only where the chip has
            native bf16, else fp32), ``fp32``, ``bf16`` or ``fp16`` (GPU, with a grad scaler).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        log_every: steps between ``metrics.jsonl`` lines (host syncs happen only here).
        checkpoint_every: steps between writes of ``checkpoints/last.pt``.
        checkpoint_minutes: also write ``last.pt`` when this much time has passed.
        keep_every: also keep ``checkpoints/step_XXXXXXX.pt`` every N steps (0 = never).
        progress: show a progress bar (rank 0).
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` extra).
        compile: wrap the backbone with ``torch.compile`` (helps on GPU only).
    """

    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    keep_every: int = 0
    progress: bool = True
    tensorboard: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(
                f"train.precision must be one of auto, fp32, bf16, fp16; got {self.precision!r}"
            )
        _check_min("train", self, log_every=1, checkpoint_every=1, keep_every=0)
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"train.checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")


def _check_min(section: str, obj: Any, **minimum: float) -> None:
    """Raise ``ValueError`` naming ``section.key`` for the first value below its minimum."""
    for name, low in minimum.items():
        value = getattr(obj, name)
        if value < low:
            raise ValueError(f"{section}.{name} must be >= {low}, got {value}")


@dataclass
class RunConfig:
    """Everything a pretraining run needs; ``params`` holds the method's dataclass."""

    method: str
    params: Any
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS: typing.ClassVar[tuple[str, ...]] = ("backbone", "views", "data", "optim", "train")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for name in self.SECTIONS:
            out[name] = to_plain(getattr(self, name))
        out[self.method] = to_plain(self.params)
        return out


def to_plain(value: Any) -> Any:
    """Dataclasses → dicts, tuples → lists (YAML- and JSON-friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert YAML lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce_value(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"config key '{key}' expects a list of {len(args)} values, got {value!r}"
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(
                f"config key '{key}' expects {len(args)} values, got {len(value)}: {value!r}"
            )
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce_value(v, arg, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' is a section; got the value {value!r}")
        return build_dataclass(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    The dataclass's own ``__post_init__`` checks (ranges, consistency) run too; their
    ``ValueError`` is re-raised as :class:`ConfigError` with the section named.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        full = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown config key '{full}'; valid keys in {where}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce_value(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid config in '{prefix or cls.__name__}': {err}") from err


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.001", "views.global_scale=[0.3,1]"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``true``, ``1e-3``, ``[1, 2]`` and ``null``
    work; anything else stays a string.
    """
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return tree


def configs_dir() -> Path:
    """The preset folder: ``configs/`` in a source checkout, or the copy shipped in the wheel."""
    source = Path(__file__).resolve().parents[2] / "configs"
    return source if source.is_dir() else Path(__file__).resolve().parent / "configs"


def preset_path(method: str, preset: str) -> Path:
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = configs_dir() / method / f"{preset}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (configs_dir() / method).glob("*.yaml"))
        raise ConfigError(
            f"no preset '{preset}' for method '{method}' (looked for {path}); "
            f"available: {', '.join(available) or 'none'}"
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config sections, got {type(data).__name__}"
        )
    return data


def build_run_config(
    method: str,
    params_cls: type,
    preset: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from defaults, a preset and overrides.

    Args:
        method: registered method name (its hyper-parameters go under this key).
        params_cls: the method's hyper-parameter dataclass.
        preset: preset name under ``configs/<method>/`` or a YAML path; None = defaults.
        overrides: ``["a.b=v", ...]`` strings or an already nested mapping.
    """
    tree: dict[str, Any] = {}
    if preset is not None:
        tree = read_yaml(preset_path(method, preset))
    if overrides:
        if isinstance(overrides, Mapping):
            update = dict(overrides)
        else:
            update = parse_overrides(list(overrides))
        tree = _merge(tree, update)
    file_method = tree.pop("method", method)
    if file_method != method:
        raise ConfigError(f"config says method '{file_method}' but '{method}' was requested")
    sections = {name: tree.pop(name, {}) for name in RunConfig.SECTIONS}
    params = tree.pop(method, {})
    if tree:
        valid = [*RunConfig.SECTIONS, method, "method"]
        raise ConfigError(
            f"unknown config key '{next(iter(tree))}'; valid top-level keys: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(RunConfig)
    built = {name: coerce_value(sections[name], hints[name], name) for name in RunConfig.SECTIONS}
    return RunConfig(method=method, params=coerce_value(params, params_cls, method), **built)
