"""Typed dataclasses from mappings and ``key=value`` overrides.

:func:`build_dataclass` turns a nested mapping (YAML, overrides, keyword arguments) into a
dataclass, checking every value against its annotation; an unknown key or a value of the
wrong type raises :class:`~densessl.errors.ConfigError` naming the key and listing the valid
ones, before anything is built. Used by the run config and by the evaluation settings.

Every float key refuses NaN and ±inf here, once for all (NaN passes every ``>= 0`` check
a dataclass makes); no key means "unlimited" by inf. Override values arrive as
:class:`~densessl.config.strict_yaml.OverrideValue`: a string-typed key gets the text as
typed, every other key YAML's reading of it. Values are shown with
:func:`~densessl.errors.brief` (escaped, at most ~80 characters) in every message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from densessl.config.strict_yaml import OverrideValue, parse_override_value, plain
from densessl.errors import ConfigError, brief, printable


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert YAML lists to tuples, ints to floats.

    Floats must be finite. An :class:`OverrideValue` gives its typed text to a string key
    (``str``, or ``str | None`` unless it reads as a bare ``null``) and YAML's reading of it
    to any other key.
    """
    if isinstance(value, OverrideValue):
        return _coerce_override(value, tp, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        return _coerce_union(value, value, options, tp, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"config key '{key}' expects a list of {len(args)} values, got {brief(value)}"
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(
                f"config key '{key}' expects {len(args)} values, got {len(value)}: {brief(value)}"
            )
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {brief(value)}")
        return [coerce_value(v, arg, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' is a section; got the value {brief(value)}")
        return build_dataclass(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {brief(value)}")
    if tp is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"config key '{key}' expects a number, got {brief(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}' must be a finite number, got {brief(value)}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {brief(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        hint = "" if isinstance(value, list | dict) else "; quote it in YAML ('...')"
        raise ConfigError(f"config key '{key}' expects a string, got {brief(value)}{hint}")
    if tp is Any:
        return plain(value, key)
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range
            return math.inf
    if isinstance(value, str) and len(value) < 100:  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce_union(value: Any, reading: Any, options: Sequence[Any], tp: Any, key: str) -> Any:
    """The first option of ``tp`` that takes ``value``; else the error of the one option of
    the value's shape (a list for a tuple), or one naming the union."""
    errors: dict[Any, ConfigError] = {}
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce_value(value, option, key)
        except ConfigError as err:
            errors[option] = err
    is_list = isinstance(reading, list | tuple)
    shaped = [o for o in errors if (typing.get_origin(o) in (tuple, list)) == is_list]
    if len(errors) == 1 or len(shaped) == 1:
        raise errors[shaped[0] if len(shaped) == 1 else next(iter(errors))]
    shown = value.text if isinstance(value, OverrideValue) else value
    raise ConfigError(f"config key '{key}': {brief(shown)} is not a valid {_type_name(tp)}")


def _coerce_override(item: OverrideValue, tp: Any, key: str) -> Any:
    if tp is str:
        return item.text
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if item.value is None and not item.quoted and type(None) in options:
            return None
        if isinstance(item.value, list | dict):  # a YAML list or mapping: text only if unfit
            options = tuple(sorted(options, key=lambda o: o is str))
        return _coerce_union(item, item.value, options, tp, key)
    if item.error is not None:
        raise ConfigError(f"config key '{key}': {item.error}")
    try:
        return coerce_value(item.value, tp, key)
    except ConfigError as err:  # show what was typed ('yes'), not YAML's reading (True)
        read, typed, text = brief(item.value), brief(item.text), str(err)
        if isinstance(item.value, list | dict) or read == typed or read not in text:
            raise
        raise ConfigError(text.replace(read, typed, 1)) from None


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
            f"unknown config key {brief(full)}; valid keys in {where}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce_value(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = printable(str(err))
        if len(message) > 500:
            message = message[:499] + "…"
        raise ConfigError(f"invalid config in '{prefix or cls.__name__}': {message}") from err


def merge_trees(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def parse_override_items(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.001", "data.path=photos #2"]`` as a nested dict of
    :class:`~densessl.config.strict_yaml.OverrideValue` leaves (typed text + YAML reading),
    for :func:`coerce_value` / :func:`build_dataclass`."""
    tree: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"override {brief(item)} is not a 'key=value' string")
        if "=" not in item:
            raise ConfigError(
                f"override {brief(item)} is not of the form key=value (e.g. optim.lr=1e-3)"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {brief(item)} has an empty key")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {brief(item)} conflicts with an earlier override")
        node[parts[-1]] = parse_override_value(raw)
    return tree


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.001", "views.global_scale=[0.3,1]"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``true``, ``1e-3``, ``[1, 2]`` and ``null``
    work; anything else stays a string. Anchors/aliases and duplicate keys are refused.
    The run config and evaluation settings read :func:`parse_override_items` instead, so
    that a string-typed key keeps the text as typed (``data.path=2024`` is ``"2024"``).
    """
    return {k: plain(v, k) for k, v in parse_override_items(items).items()}
