"""YAML for presets and ``key=value`` overrides, without YAML's traps.

* Anchors and aliases (``&a`` / ``*a``) are refused: a few lines of aliases ("billion
  laughs") expand to an unbounded value. Presets and overrides are short; write values out.
* A key given twice in one mapping is refused (plain YAML keeps the last one silently: a
  second ``optim:`` block would drop the first).
* Nesting too deep, numbers too long to read and impossible dates end as a
  :class:`~densessl.errors.ConfigError` naming the file (or override), never a traceback.

Overrides keep the text the user typed next to YAML's reading of it
(:class:`OverrideValue`): a string-typed key (``data.path=2024``, ``data.path=photos #2``,
``data.path=yes``) gets exactly the typed text, any other key YAML's reading
(``optim.lr=1e-3``, ``seeds=[0,1]``, ``memory_size=null``); see
:func:`densessl.config.coerce.coerce_value`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from densessl.errors import ConfigError, brief, printable


class RefusedYAML(yaml.YAMLError):
    """Valid YAML that densessl does not accept (aliases, duplicate keys)."""


def _line(node_or_event: Any) -> int:
    return int(node_or_event.start_mark.line) + 1


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases and duplicate keys."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RefusedYAML(
                f"line {_line(event)}: YAML anchors and aliases ('&name', '*name') are not "
                "supported (they can expand without bound); write the values out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise RefusedYAML(
                    f"line {_line(key_node)}: key {brief(key)} is given twice in one mapping "
                    f"(first on line {seen[key]}); merge the two into one"
                )
            if isinstance(key, Hashable):
                seen[key] = _line(key_node)
        return super().construct_mapping(node, deep)


def _describe(err: BaseException) -> str:
    """One line saying what is wrong and where (PyYAML's own message spans several)."""
    if isinstance(err, RefusedYAML):
        return str(err)
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        what = " ".join(str(err.problem or err.context or "syntax error").split())
        return f"line {mark.line + 1}, column {mark.column + 1}: {printable(what)}"
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return printable(" ".join(str(err).split()))[:200]


_FAILURES = (yaml.YAMLError, ValueError, TypeError, RecursionError, OverflowError)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` with :class:`StrictLoader`; ``source`` (a file) names it in errors."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except _FAILURES as err:
        kind = "refused YAML" if isinstance(err, RefusedYAML) else "not valid YAML"
        raise ConfigError(f"{printable(source)}: {kind}: {_describe(err)}") from None


def read_yaml_file(path: Path) -> Any:
    """The parsed YAML of ``path`` (errors name the file)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{printable(str(path))}: cannot read it: {err}") from None
    return load_yaml(text, str(path))


@dataclass(frozen=True)
class OverrideValue:
    """One ``key=value`` override: the typed text and YAML's reading of it.

    Attributes:
        text: what was typed (a list item: YAML's text of it, unquoted); a
            string-typed key gets exactly this, quotes included.
        value: YAML's reading: scalars, or lists / dicts of :class:`OverrideValue`.
        error: why YAML's reading is refused (aliases, duplicate keys), or None; only
            keys that need the reading (not string keys) report it.
        quoted: the text was a quoted YAML string (so ``'null'`` is not None for a
            ``str | None`` key; it is the text ``'null'``).
    """

    text: str
    value: Any
    error: str | None = None
    quoted: bool = False


def _from_node(loader: StrictLoader, node: Node) -> Any:
    if isinstance(node, ScalarNode):
        value = loader.construct_object(node, deep=True)
        return OverrideValue(node.value, value, quoted=node.style in ("'", '"'))
    if isinstance(node, SequenceNode):
        return [_from_node(loader, item) for item in node.value]
    if isinstance(node, MappingNode):
        loader.construct_mapping(node, deep=True)  # duplicate keys are refused here
        return {loader.construct_object(k, deep=True): _from_node(loader, v) for k, v in node.value}
    raise RefusedYAML(f"unsupported YAML node {type(node).__name__}")


def parse_override_value(raw: str) -> OverrideValue:
    """``raw`` (the text after ``=``) with YAML's reading of it; YAML errors keep the text."""
    if not raw.strip():
        return OverrideValue(raw, raw)
    try:
        loader = StrictLoader(raw)
    except yaml.YAMLError:  # characters YAML refuses (control characters)
        return OverrideValue(raw, raw)
    try:
        node = loader.get_single_node()
        if node is None:  # only a comment
            return OverrideValue(raw, None)
        if isinstance(node, ScalarNode):
            item = _from_node(loader, node)
            return OverrideValue(raw, item.value, None, item.quoted)
        return OverrideValue(raw, _from_node(loader, node))
    except RefusedYAML as err:
        return OverrideValue(raw, raw, error=str(err))
    except _FAILURES:  # not YAML: the text itself (e.g. "a: b: c")
        return OverrideValue(raw, raw)
    finally:
        loader.dispose()


def plain(value: Any, key: str) -> Any:
    """``value`` with every :class:`OverrideValue` replaced by YAML's reading of it."""
    if isinstance(value, OverrideValue):
        if value.error is not None:
            raise ConfigError(f"config key '{key}': {value.error}")
        return plain(value.value, key)
    if isinstance(value, list):
        return [plain(v, key) for v in value]
    if isinstance(value, dict):
        return {k: plain(v, f"{key}.{k}") for k, v in value.items()}
    return value
