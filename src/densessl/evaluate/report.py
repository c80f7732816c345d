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
    """The settings of a protocol dataclass ``p`` in one line."""
    if protocol == "linear":
        views = (
            "fresh crop+flip per epoch"
            if p.cache_views == 0
            else f"{p.cache_views} cached views/img"
        )
        return (
            f"{p.head} head on {p.image_size} px, scored at {p.eval_mask_size} px; "
            f"SGD lr {p.lr:g} (x{p.lr_gamma:g} at ep {p.lr_step_epoch}), {p.epochs} ep, "
            f"batch {p.batch_size}; {views}; seed {p.seed}"
        )
    if protocol == "cluster":
        prep = ("standardise, " if p.standardize else "") + (
            f"PCA-{p.pca_dim}" if p.pca_dim is not None else "no PCA"
        )
        seeds = ",".join(str(s) for s in p.seeds)
        return (
            f"{p.image_size} px, scored at {p.mask_size} px; {prep}; k-means "
            f"({p.init}) {p.iters} it x{p.n_init} restarts; seeds {seeds}"
        )
    if protocol == "unsupervised":
        return _describe_unsupervised(p)
    memory = "all patches" if p.memory_size is None else f"{p.memory_size} patches"
    return (
        f"{p.image_size} px; memory {memory} from {p.augment_epochs} aug passes; "
        f"k={p.num_neighbors}, T={p.temperature:g}; std ({p.std[0]:g}, {p.std[1]:g}, "
        f"{p.std[2]:g}); seed {p.seed}"
    )


def _values(values: Any) -> str:
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return items[0] if len(items) == 1 else "{" + ",".join(items) + "}"


def _describe_unsupervised(p: Any) -> str:
    prep = ("standardise, " if p.standardize else "") + (
        f"PCA-{p.pca_dim}" if p.pca_dim is not None else "no PCA"
    )
    attention = p.attention_backbone or "own"
    scale_name, scales = p.scales
    return (
        f"{p.image_size} px, scored at {p.mask_size} px; {prep}; CBFE: spherical k-means "
        f"K={p.k_fg}, {attention} CLS attn {p.attention_mass:g} mass; CD: {p.community} over "
        f"k={_values(p.k_community)} wt={_values(p.weight_threshold)} "
        f"{scale_name}={_values(scales)}, {len(p.cd_seeds)} seeds; CBFE cut and CD settings "
        "chosen with train-split labels (as in the paper)"
    )


def summarize(protocol: str, p: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows of a result: ``{"result", "miou", "std", "matching", "protocol"}``."""
    words = describe_protocol(protocol, p)
    rows: list[dict[str, Any]] = []
    if protocol == "linear":
        rows.append({"result": "mIoU", "miou": results["miou"], "std": None, "matching": "none"})
    elif protocol == "cluster":
        for key, entry in results["results"].items():
            rows.append(
                {
                    "result": key,
                    "miou": entry["miou_mean"],
                    "std": entry["miou_std"],
                    "matching": entry["matching"],
                }
            )
    elif protocol == "unsupervised":
        cd = results["community"]
        rows.append(
            {
                "result": f"CBFE+CD ({cd['method']})",
                "miou": cd["miou_mean"],
                "std": cd["miou_std"],
                "matching": "hungarian",
            }
        )
        only = results.get("cbfe_only")
        if only is not None:
            rows.append(
                {
                    "result": f"CBFE only (K={only['k']})",
                    "miou": only["miou_mean"],
                    "std": only["miou_std"],
                    "matching": "hungarian",
                }
            )
    else:
        for matching, value in (
            ("none", results["miou_no_matching"]),
            ("hungarian (as the official code)", results["miou_hungarian"]),
        ):
            rows.append({"result": "mIoU", "miou": value, "std": None, "matching": matching})
    for row in rows:
        row["protocol"] = words
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def format_table(record: dict[str, Any]) -> str:
    """The printed form of :func:`densessl.evaluate.api.evaluate`'s result."""
    data = record["dataset"]
    split = f"{data['val_split']} {data['num_val']}"
    if data.get("train_split"):
        split = f"{data['train_split']} {data['num_train']} -> {split}"
    backbone = record["backbone"].get("description") or record["backbone"].get("kind")
    lines = [
        f"densessl eval {record['protocol']} | {data['name']} ({split} images, "
        f"{data['num_classes']} classes) | {record.get('seconds', 0):.0f} s on "
        f"{record.get('device', '?')}",
        f"backbone: {backbone}",
    ]
    header = ("result", "mIoU %", "± std", "matching", "protocol")
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
