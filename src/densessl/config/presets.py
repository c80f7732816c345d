"""Presets and the resolution of a run's configuration.

Values are merged in this order: dataclass defaults → preset YAML (shipped inside the
package as ``densessl/methods/<method>/presets/<preset>.yaml``, or any YAML file given by
path) → ``key=value`` overrides.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from densessl.config.coerce import coerce_value, merge_trees, parse_override_items
from densessl.config.schema import RunConfig
from densessl.config.strict_yaml import plain, read_yaml_file
from densessl.errors import ConfigError, brief, printable
from densessl.methods.base import get_method


def presets_dir(method: str) -> Path:
    """The folder holding ``method``'s presets: ``presets/`` beside its package's modules.

    Presets ship inside the package (``densessl/methods/<name>/presets/*.yaml``), so a wheel
    install has them; a method registered from outside densessl keeps its own beside it.
    """
    return get_method(method).presets_dir()


def list_presets(method: str) -> list[str]:
    """Names of the presets shipped with ``method`` (``tiny``, ``paper``, ...)."""
    return sorted(p.stem for p in presets_dir(method).glob("*.yaml"))


def preset_path(method: str, preset: str) -> Path:
    """The YAML file of ``preset``: a shipped preset's name, or a path to a YAML file."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    if candidate.suffix in (".yaml", ".yml"):
        raise ConfigError(f"preset file {printable(str(candidate))} does not exist")
    path = presets_dir(method) / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no preset {brief(preset)} for method '{method}' (looked for {printable(str(path))}); "
            f"available: {', '.join(list_presets(method)) or 'none'}"
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    """A preset file's mapping (anchors, aliases and duplicate keys refused)."""
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{printable(str(path))}: expected a mapping of config sections, "
            f"got {type(data).__name__}"
        )
    return data


def load_preset(method: str, preset: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config tree of ``preset``, with the preset it ``extends`` merged underneath.

    A preset may start with ``extends: NAME`` (a preset of the same method, or a YAML path
    relative to the file): its values are the defaults this file overrides, key by key.
    """
    path = preset_path(method, preset).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"{printable(str(path))}: 'extends' forms a cycle: {printable(cycle)}")
    tree = read_yaml(path)
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"{printable(str(path))}: 'extends' must name a preset or a YAML file, "
            f"got {brief(base)}"
        )
    if base.endswith((".yaml", ".yml")):
        base = str(path.parent / base)
    return merge_trees(load_preset(method, base, (*_chain, path)), tree)


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
        preset: a shipped preset's name (``tiny``, ``paper``) or a YAML path; None = defaults.
        overrides: ``["a.b=v", ...]`` strings or an already nested mapping.
    """
    tree: dict[str, Any] = {}
    if preset is not None:
        tree = load_preset(method, preset)
    if overrides:
        if isinstance(overrides, Mapping):
            update = dict(overrides)
        else:
            update = parse_override_items(list(overrides))
        tree = merge_trees(tree, update)
    file_method = plain(tree.pop("method", method), "method")
    if file_method != method:
        raise ConfigError(
            f"config says method {brief(file_method)} but '{method}' was requested"
        )
    sections = {name: tree.pop(name, {}) for name in RunConfig.SECTIONS}
    params = tree.pop(method, {})
    if tree:
        valid = [*RunConfig.SECTIONS, method, "method"]
        raise ConfigError(
            f"unknown config key {brief(next(iter(tree)))}; valid top-level keys: "
            f"{', '.join(valid)}"
        )
    hints = typing.get_type_hints(RunConfig)
    built = {name: coerce_value(sections[name], hints[name], name) for name in RunConfig.SECTIONS}
    return RunConfig(method=method, params=coerce_value(params, params_cls, method), **built)
