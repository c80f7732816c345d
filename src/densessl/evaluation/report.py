"""Result rows and the printed table of ``densessl eval``: the protocol next to every number.

Users complain that dense protocols are never pinned; every row printed here therefore
carries the settings that produced it in words (resolution, scoring size, optimiser or
clustering recipe, memory, ...), and the JSON carries all of them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from densessl.evaluation.registry import get_protocol

__all__ = ["describe_protocol", "format_table", "jsonable", "summarize"]


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples, tensors and paths → plain JSON values (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe_protocol(protocol: str, p: Any) -> str:
    """The settings of protocol ``protocol``'s dataclass ``p`` in one line."""
    return get_protocol(protocol).describe(p)


def summarize(protocol: str, p: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows of a result: ``{"result", "miou", "std", "matching", "protocol"}``
    (``miou`` holds the protocol's headline number; an optional ``metric`` names it for the
    table's header when it is not mIoU, e.g. ``"top-1"`` or ``"CorLoc"``)."""
    record = get_protocol(protocol)
    words = record.describe(p)
    return [{**row, "protocol": words} for row in record.summarize(p, results)]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def format_table(record: dict[str, Any]) -> str:
    """The printed form of :func:`densessl.evaluation.api.evaluate`'s result."""
    data = record["dataset"]
    split = f"{data['val_split']} {data['num_val']}"
    if data.get("train_split"):
        split = f"{data['train_split']} {data['num_train']} -> {split}"
    backbone = record["backbone"].get("description") or record["backbone"].get("kind")
    classes = "" if data.get("num_classes") is None else f", {data['num_classes']} classes"
    lines = [
        f"densessl eval {record['protocol']} | {data['name']} ({split} images{classes}) | "
        f"{record.get('seconds', 0):.0f} s on {record.get('device', '?')}",
        f"backbone: {backbone}",
    ]
    metric = record["summary"][0].get("metric", "mIoU") if record["summary"] else "mIoU"
    header = ("result", f"{metric} %", "± std", "matching", "protocol")
    rows = [
        (r["result"], _pct(r["miou"]), _pct(r["std"]), r["matching"], r["protocol"])
        for r in record["summary"]
    ]
    widths = [max(len(str(x[i])) for x in (header, *rows)) for i in range(4)]
    for row in (header, *rows):
        cells = [str(row[i]).ljust(widths[i]) if i in (0, 3) else str(row[i]).rjust(widths[i])
                 for i in range(4)]  # fmt: skip
        lines.append("  ".join([*cells, str(row[4])]))
    note = record.get("results", {}).get("note")
    if note:
        lines.append(f"note: {note}")
    if record.get("json"):
        lines.append(f"all settings and per-class IoU: {record['json']}")
    return "\n".join(lines)
