"""Checks of evaluation settings, so that a bad value is named before any image is read.

:func:`check_fields` is what the settings dataclasses' ``__post_init__`` call (their
``ValueError`` becomes a :class:`~densessl.errors.ConfigError` naming the protocol in
:meth:`densessl.evaluation.registry.ProtocolRecord.resolve`). :func:`check_against_backbone`
runs once the backbone is known (input size vs patch size, an installed faiss), and
:func:`coerce_dataset_options` types the ``data.*`` options by the dataset class's
signature, as settings are typed by their dataclass.
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from densessl.config.coerce import coerce_value
from densessl.config.strict_yaml import plain
from densessl.errors import ConfigError, brief


def is_int(value: Any, low: int) -> bool:
    """An int (not a bool) ``>= low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_num(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plain_hint(tp: Any) -> Any:
    """``Sequence[X]`` → ``tuple[X, ...]`` (recursively) so that config coercion handles it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is collections.abc.Sequence:
        return tuple[plain_hint(args[0]), ...]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(plain_hint(a) for a in args)]  # noqa: UP007
    return tp


def check_fields(
    obj: Any,
    *,
    ints: Mapping[str, int] | None = None,
    optional_ints: Mapping[str, int] | None = None,
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    within: Mapping[str, tuple[float, float]] | None = None,
    ranges: Iterable[str] = (),
    bools: Iterable[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Raise ``ValueError`` naming ``Class.field`` for the first value out of its range.

    Args:
        ints: field -> lowest allowed integer; ``optional_ints`` the same, None allowed.
        positive / non_negative: finite numbers > 0 / >= 0.
        within: field -> ``(lo, hi)``, a finite number in ``[lo, hi]``.
        ranges: pairs ``(lo, hi)`` with ``0 < lo <= hi``.
        bools: true/false fields.
        choices: field -> the allowed strings.
    """
    rules: list[tuple[str, Any, str]] = []
    rules += [
        (n, lambda v, lo=lo: is_int(v, lo), f"an integer >= {lo}")
        for n, lo in (ints or {}).items()
    ]
    rules += [
        (n, lambda v, lo=lo: v is None or is_int(v, lo), f"an integer >= {lo} or null")
        for n, lo in (optional_ints or {}).items()
    ]
    rules += [(n, lambda v: is_num(v) and v > 0, "a number > 0") for n in positive]
    rules += [(n, lambda v: is_num(v) and v >= 0, "a number >= 0") for n in non_negative]
    rules += [
        (n, lambda v, lo=lo, hi=hi: is_num(v) and lo <= v <= hi, f"in [{lo}, {hi}]")
        for n, (lo, hi) in (within or {}).items()
    ]
    rules += [(n, _is_range, "a pair 0 < lo <= hi") for n in ranges]
    rules += [(n, lambda v: isinstance(v, bool), "true or false") for n in bools]
    rules += [
        (n, lambda v, ok=tuple(ok): v in ok, f"one of {', '.join(map(repr, ok))}")
        for n, ok in (choices or {}).items()
    ]
    for name, ok, what in rules:
        value = getattr(obj, name)
        if not ok(value):
            raise ValueError(f"{type(obj).__name__}.{name} must be {what}, got {brief(value)}")


def _is_range(value: Any) -> bool:
    if not isinstance(value, Sequence) or len(value) != 2:
        return False
    lo, hi = value
    return is_num(lo) and is_num(hi) and 0 < lo <= hi


def check_int_list(obj: Any, name: str, low: int) -> None:
    """``obj.name`` must be a non-empty list of integers >= ``low``."""
    values = getattr(obj, name)
    items = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else []
    if not items or not all(is_int(v, low) for v in items):
        raise ValueError(
            f"{type(obj).__name__}.{name} must be a non-empty list of integers >= {low}, "
            f"got {brief(values)}"
        )


def check_against_backbone(protocol: str, settings: Any, patch_size: int | None) -> None:
    """What needs the backbone: input sides that are multiples of its patch size, and an
    installed faiss for a faiss backend; raises :class:`ConfigError` naming the setting."""
    size = getattr(settings, "image_size", None)
    if patch_size and isinstance(size, int) and size % patch_size:
        low, high = (size // patch_size) * patch_size, (size // patch_size + 1) * patch_size
        fits = f"{low} or {high}" if low else str(high)
        raise ConfigError(
            f"{protocol} setting image_size={size} is not a multiple of the backbone's patch "
            f"size {patch_size}; use e.g. image_size={fits}"
        )
    for name in ("backend", "search_backend"):
        if getattr(settings, name, None) == "faiss":
            from densessl.ops.faiss_backend import require_faiss

            require_faiss(f"{protocol} setting {name}=faiss")  # MissingFaissError: the hint


def coerce_dataset_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """``data.*`` options typed by ``cls.__init__``'s annotations (as settings are by their
    dataclass): a string option keeps the text as typed, numbers must be finite; options
    without a usable annotation get YAML's reading."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that do not resolve here: no typing, as before
        hints = {}
    out = {}
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = plain(value, f"data.{key}")
            continue
        try:
            out[key] = coerce_value(value, plain_hint(hint), f"data.{key}")
        except ConfigError as err:
            if "unsupported type" not in str(err):
                raise
            out[key] = plain(value, f"data.{key}")
    return out
