"""The report of the quality benchmark: ``quality.md``, ``quality.json`` and the PCA picture.

Cells are read from their folders: those of the current budget and code version or, where
such a cell is missing, the newest finished cell with the same spec under an older code
version, marked stale (†) with its commit. A row shows mean ± sample std over its finished
seeds and how many of the planned seeds are done, so a partial run still gives an honest
table. The targets of the benchmark are checked automatically: a gap counts when it exceeds
k · sqrt(std_a² + std_b²) with at least three seeds on both sides.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from quality_ceiling_match import MATCH_TEMPERATURE

COLUMNS = (
    ("linear", "linear"),
    ("cluster_C", "K=C Hungarian"),
    ("cluster_4C", "K=4C many-to-one"),
    ("retrieval", "retrieval"),
    ("knn", "k-NN top-1"),
    ("discovery", "CorLoc"),
    ("video", "video J&F"),
    ("correspondence", "PCK@0.1"),
    ("finetune", "fine-tuned linear"),
)
LABELS = {
    "onehot-pixel": "one-hot labels, pixel cells (evaluator sanity)",
    "onehot-patch": "one-hot labels, 8-px cells (patch-grid ceiling)",
    "random": "random init (floor)",
    "base": "the base, not post-trained",
    "supervised": "supervised on the masks (ceiling)",
    "supervised-image": "supervised on the masks + dominant object on CLS (k-NN ceiling)",
    "supervised-match": "supervised on exact correspondences (PCK ceiling)",
}
#: The ceiling row of each image-level column: the row trained with the label it measures
#: (``quality_ceilings.py``); the masks' ``supervised`` row for the others.
CEILING_OF = {
    "knn": "supervised-image",
    "discovery": "supervised",
    "video": "supervised",
    "correspondence": "supervised-match",
    "finetune": "supervised",
}
PICTURE = "quality_pca.png"
FINDINGS = "findings.md"


def load_cells(expected: dict[tuple[str, int], Path]) -> dict[tuple[str, int], dict[str, Any]]:
    cells = {}
    for key, folder in expected.items():
        path = folder / "cell.json"
        if path.is_file():
            cells[key] = json.loads(path.read_text())
    return cells


def _stats(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) >= 2 else None)


def row_stats(cells: dict, row: str) -> dict[str, Any]:
    done = [c for (r, _), c in sorted(cells.items()) if r == row]
    out: dict[str, Any] = {"row": row, "seeds_done": [c["seed"] for c in done]}
    for key, _ in COLUMNS:
        values = [c["results"][key] for c in done if key in c["results"]]
        out[key] = (*_stats(values), len(values)) if values else None
    trained = [c["training"] for c in done if c["training"].get("steps")]
    if trained:
        out["steps"] = trained[0]["steps"]
        out["train_minutes"] = statistics.fmean(t["train_seconds"] for t in trained) / 60
        losses = [t["final_loss"] for t in trained if t.get("final_loss") is not None]
        out["final_loss"] = statistics.fmean(losses) if losses else None
    return out


def _cell_text(value: tuple[float, float | None, int] | None) -> str:
    if value is None:
        return "—"
    mean, std, _ = value
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def format_table(
    stats: list[dict[str, Any]], planned: dict[str, int], stale_rows: set[str] = frozenset()
) -> str:
    head = ["row", "seeds"] + [name for _, name in COLUMNS] + ["steps", "train min", "loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stats:
        extra = [
            str(s.get("steps", "—")),
            f"{s['train_minutes']:.1f}" if "train_minutes" in s else "—",
            f"{s['final_loss']:.3f}" if s.get("final_loss") is not None else "—",
        ]
        seeds = f"{len(s['seeds_done'])}/{planned[s['row']]}" + (
            " †" if s["row"] in stale_rows else ""
        )
        cells = [LABELS.get(s["row"], s["row"]), seeds]
        cells += [_cell_text(s[key]) for key, _ in COLUMNS] + extra
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gap(a: Any, b: Any, k: float) -> tuple[str, str]:
    """Is ``a`` above ``b`` by more than k combined std? (status, text)."""
    if a is None or b is None or a[2] < 3 or b[2] < 3:
        return "pending", "needs >= 3 seeds on both rows"
    gap = a[0] - b[0]
    sigma = math.sqrt((a[1] or 0.0) ** 2 + (b[1] or 0.0) ** 2)
    ok = gap > k * sigma
    return ("met" if ok else "NOT met"), f"gap {gap:+.1f}, {k:g}σ = {k * sigma:.1f}"


def check_targets(by_row: dict[str, dict[str, Any]]) -> list[str]:
    lines = []

    def value(row: str, key: str) -> Any:
        return by_row.get(row, {}).get(key)

    for row, key, floor, what in (
        ("onehot-pixel", "linear", 95.0, "one-hot labels (pixel cells) linear ≥ 95"),
        ("supervised", "linear", 40.0, "supervised linear ≥ 40"),
    ):
        v = value(row, key)
        status = "pending" if v is None else ("met" if v[0] >= floor else "NOT met")
        lines.append(f"- {what}: **{status}**" + ("" if v is None else f" ({v[0]:.1f})"))
    names = dict(COLUMNS)
    for key, ceiling in CEILING_OF.items():
        status, text = _gap(value(ceiling, key), value("random", key), 3)
        lines.append(
            f"- {names[key]}: ceiling row `{ceiling}` above random init by > 3σ: "
            f"**{status}** ({text})"
        )
    for key, name in (("linear", "linear"), ("cluster_C", "K=C")):
        status, text = _gap(value("dino", key), value("random", key), 3)
        lines.append(f"- DINO above random init by > 3σ on {name}: **{status}** ({text})")
    dense = [r for r in by_row if r not in ("onehot-pixel", "onehot-patch", "random")]
    for row in dense:
        if row in ("supervised", "dino", "base", *CEILING_OF.values()):
            continue
        for key, name in (("linear", "linear"), ("cluster_C", "K=C"), ("cluster_4C", "K=4C")):
            status, text = _gap(value(row, key), value("dino", key), 2)
            lines.append(f"- {row} above DINO by > 2σ on {name}: **{status}** ({text})")
    return lines


def _picture(cells: dict, expected: dict, rows: list[str], out: Path) -> Path | None:
    from densessl.viz.draw import compose_panel, image_to_pil, label_overlay, map_to_pil
    from densessl.viz.pca import pca_rgb

    tiles, base = [], None
    for row in rows:
        seeds = sorted(s for (r, s) in cells if r == row)
        if not seeds or row.startswith("onehot"):
            continue
        path = expected[(row, seeds[0])] / "picture_features.pt"
        if not path.is_file():
            continue
        data = torch.load(path, map_location="cpu", weights_only=True)
        if base is None:
            image = image_to_pil(data["image"]).resize((192, 192))
            labels = data["label"].long()
            tiles += [("image", image), ("labels", label_overlay(image.copy(), labels))]
            base = image
        rgb = pca_rgb([data["features"]])[0]
        tiles.append((row, map_to_pil(rgb, (192, 192))))
    if base is None:
        return None
    path = out / PICTURE
    compose_panel(tiles, columns=4).save(path)
    return path


def write_report(
    out: Path,
    expected: dict[tuple[str, int], Path],
    rows: list[str],
    budget: Any,
    command: str,
    quick: bool,
    stale: set[tuple[str, int]] = frozenset(),
) -> list[Path]:
    """Write ``quality.md``, ``quality.json`` and the picture into ``out``; return the paths."""
    from quality_cells import describe_budget

    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(expected)
    stale_keys = stale & cells.keys()
    for key in stale_keys:
        cells[key]["stale"] = True
    stale_rows = {row for row, _ in stale_keys}
    commits = sorted({str(cells[key].get("git_commit"))[:7] for key in stale_keys})
    planned = {row: sum(1 for (r, _) in expected if r == row) for row in rows}
    stats = [row_stats(cells, row) for row in rows]
    by_row = {s["row"]: s for s in stats}
    picture = _picture(cells, expected, rows, out)
    hardware = hardware_summary(cells)
    table = format_table(stats, planned, stale_rows)
    checks = check_targets(by_row)
    md = [
        "# Quality benchmark: dense SSL methods at equal compute on synthetic scenes",
        "",
        *(
            [
                "**Post-training table**: every method row (`dino` = DINO continued, the "
                f"control) starts from the base `{Path(budget.init).name}`.",
                "",
            ]
            if budget.init
            else []
        ),
        *(["Quick smoke mode: the numbers below are NOT quality results.", ""] if quick else []),
        f"Command: `{command}` (resumable; finished cells are reused).",
        "",
        table,
        "",
        "mIoU % on held-out scenes, mean ± sample std over training seeds (`seeds`: done/planned).",
        *(
            [
                "",
                "† Some cells of this row were computed by an older version of the densessl "
                f"code (commit {', '.join(commits)}): the code has changed since, so "
                f"`{command}` recomputes them.",
            ]
            if stale_rows
            else []
        ),
        "",
        "## Targets",
        "",
        *checks,
        "",
        "## Protocol",
        "",
        _protocol_text(budget, hardware_text(hardware)),
    ]
    if picture is not None:
        md += ["", f"![PCA of patch features, one held-out image]({PICTURE})", ""]
    findings = out / FINDINGS
    if findings.is_file():  # hand-written analysis kept next to the results
        md += ["", "## Findings (written by hand: re-check them against the table)", ""]
        md += [findings.read_text().strip(), ""]
    md_path = out / "quality.md"
    md_path.write_text("\n".join(md) + "\n")
    record = {
        "command": command,
        "budget": describe_budget(budget),
        "hardware": hardware,
        "rows": stats,
        "targets": checks,
        "cells": [cells[k] for k in sorted(cells)],
    }
    json_path = out / "quality.json"
    json_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return [md_path, json_path] + ([picture] if picture is not None else [])


def hardware_summary(cells: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the cells ran: one entry per distinct machine setting, with the cells it ran.

    Cells are computed wherever a session runs, so one table can mix CPUs and autocast dtypes
    (``train.precision=auto`` trains in bf16 only where the CPU has it natively).
    """
    keys = ("cpu", "torch_threads", "device", "dtype", "torch")
    groups: dict[tuple[str, ...], list[str]] = {}
    for (row, seed), cell in sorted(cells.items()):
        h = cell.get("hardware", {})
        groups.setdefault(tuple(str(h.get(k, "?")) for k in keys), []).append(f"{row}/{seed}")
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return [{**dict(zip(keys, setting, strict=True)), "cells": names} for setting, names in ordered]


def hardware_text(summary: list[dict[str, Any]]) -> str:
    """The protocol's hardware line: each setting, how many cells used it and, for all but the
    most used setting, which ones."""
    parts = []
    for i, s in enumerate(summary):
        n = len(s["cells"])
        which = f" ({', '.join(s['cells'])})" if i > 0 else ""
        parts.append(
            f"{s['cpu']}, {s['torch_threads']} threads, {s['device']}, autocast {s['dtype']}, "
            f"torch {s['torch']}: {n} cell{'s' if n != 1 else ''}{which}"
        )
    return "; ".join(parts) if parts else "no cells yet"


def _protocol_text(budget: Any, hardware: str) -> str:
    return "\n".join(
        [
            f"- Pretraining: {budget.steps} optimizer steps of batch {budget.batch_size} on "
            f"{budget.pretrain_scenes} generated scenes ({budget.scenes_size} px, scene seed 0, "
            f"train split, class set `{budget.scenes_class_set}`, colours "
            f"`{budget.scenes_colours}`, {budget.scenes_objects[0]}-{budget.scenes_objects[1]} "
            f"objects of radius {budget.scenes_radius[0]}-{budget.scenes_radius[1]}); each "
            "method's `tiny` preset "
            "(its crops, heads, optimiser recipe) with "
            f"the shared ViT (vit_tiny, 128-d, {budget.depth} blocks, 4 heads, patch 8); seeds "
            f"{', '.join(map(str, budget.seeds))} (init, data order, augmentation).",
            *(
                [
                    f"- Post-training: each method row starts from `{Path(budget.init).name}` "
                    "(`densessl pretrain --init`: the backbone of the student and the teacher; "
                    "heads, prototypes and optimiser fresh); the `base` row is that backbone "
                    "evaluated as is. Floor and ceiling rows are trained from scratch."
                ]
                if budget.init
                else []
            ),
            "- Supervised: the same ViT + a 1x1 linear head, pixel cross-entropy on the masks of "
            "the same scenes, global-crop-sized random crops, same steps and batch, AdamW "
            f"lr {budget.supervised_lr:g}; only the backbone is evaluated.",
            "- Protocol-fitting ceilings (quality_ceilings.py; the supervised row's scenes, "
            "steps, batch, crop rule and optimiser): supervised-image, the supervised row "
            "(same crops, same pixel loss) plus a linear head on the CLS token with "
            "cross-entropy on each crop's dominant object class (k-NN's label); "
            f"supervised-match, InfoNCE (τ {MATCH_TEMPERATURE:g}) between a point's "
            "bilinear patch feature in one random view and every patch of another view of the same "
            "training scene, the patch holding the point being the positive (PCK's label). "
            "Ceiling of each column: "
            + ", ".join(f"{dict(COLUMNS)[k]} → {v}" for k, v in CEILING_OF.items())
            + ".",
            f"- Evaluation: {budget.eval_scenes} held-out scenes (scene seed {budget.eval_seed}; "
            "80 % train / 20 % val), native resolution, the teacher backbone's patch tokens: "
            "linear probe (scenes preset, train → val), overclustering on val (standardise, "
            "PCA-50, k-means, 3 seeds; K = C Hungarian, K = 4C many-to-one), dense retrieval "
            "(train memory → val, no matching). Overrides: "
            f"linear {budget.linear or 'none'}, cluster {budget.cluster or 'none'}, "
            f"retrieval {budget.retrieval or 'none'}. Image-level and video columns "
            "(quality_columns.py, their scenes presets): k-NN top-1 on dominant-object labels, "
            "LOST CorLoc on the exact object boxes, DAVIS-style J&F on synthetic videos, "
            f"PCK@0.1 on view pairs; data {budget.image_level}. Fine-tuned: a copy of the "
            "backbone with Segmenter's linear decoder, densessl finetune seg's scenes recipe "
            f"({budget.finetune}) on the held-out train split, val mIoU.",
            f"- Hardware (cells are computed wherever a session runs; autocast dtype from "
            f"`train.precision=auto`): {hardware}.",
        ]
    )
