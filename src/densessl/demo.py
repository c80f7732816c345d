"""The end-to-end demo on the embedded default data (the README's first command).

Writes synthetic scenes, prints their statistics, pretrains a method's tiny preset on the
train split (Leopart by default: the dense method built for segmentation; measured on 1000
scenes, 600 steps, it edges out DINO-tiny on linear, K=4C clustering and retrieval mIoU),
evaluates the trained teacher and a random-init backbone of the same architecture on
the val split with the three dense protocols (linear probe, overclustering, dense
retrieval), draws feature pictures of a few val scenes for both, exports the teacher to timm
format, and writes ``report.md`` in the run directory with the table and the pictures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from densessl.data.scenes.dataset import format_statistics, scene_statistics, write_scenes
from densessl.methods.base import get_method
from densessl.train.trainer import pretrain, read_metrics

PROTOCOLS = ("linear", "cluster", "retrieval")


def _evaluate_all(run: Path, scenes: Path, out: Path, label: str) -> list[dict[str, Any]]:
    from densessl.evaluation.api import evaluate

    rows = []
    for name, backbone in ((label, str(run)), ("random init", f"random:{run}")):
        for protocol in PROTOCOLS:
            tag = "trained" if backbone == str(run) else "random"
            record = evaluate(
                protocol,
                backbone,
                "scenes",
                root=scenes,
                out=out / f"{protocol}_{tag}.json",
                progress=False,
                verbose=False,
            )
            for row in record["summary"]:
                rows.append({"backbone": name, "eval": protocol, **row})
            print(f"  {name:<12} {protocol:<10} done ({record['seconds']:.0f} s)")
    return rows


#: Collapse diagnostics shown in the summary when the method logs them.
DIAGNOSTICS = (
    "teacher_entropy",
    "teacher_batch_entropy",
    "assignment_entropy",
    "used_prototypes",
    "patch_loss",
)


def _training_summary(records: list[dict[str, Any]]) -> str:
    first, last = records[0], records[-1]
    shown = [f"{k.replace('_', ' ')} {last[k]:.2f}" for k in DIAGNOSTICS if k in last]
    return "; ".join(
        [
            f"{last['step']} steps, loss {first['loss']:.3f} (step {first['step']}) -> "
            f"{last['loss']:.3f}",
            *shown,
            f"{last['img_s']:.0f} img/s",
        ]
    )


def _format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'backbone':<12} {'eval':<10} {'result':<6} {'matching':<10} {'mIoU':>13}"]
    for r in rows:
        std = f" ± {100 * r['std']:.1f}" if r.get("std") is not None else ""
        matching = r["matching"].split(" ")[0]
        miou = f"{100 * r['miou']:.1f}{std}"
        lines.append(
            f"{r['backbone']:<12} {r['eval']:<10} {r['result']:<6} {matching:<10} {miou:>13}"
        )
    protocols = {r["eval"]: r["protocol"] for r in rows}
    lines += [f"  {name}: {words}" for name, words in protocols.items()]
    return "\n".join(lines)


def run_demo(
    out: Path, steps: int | None = None, num_images: int = 1000, method: str = "leopart"
) -> Path:
    """Run the demo into ``out`` and return the pretraining run directory."""
    start = time.perf_counter()
    get_method(method)  # an unknown name fails before the scenes are written
    out = Path(out)
    scenes = out / "scenes"
    if not (scenes / "classes.json").is_file():
        write_scenes(scenes, num_images, 96, seed=0, progress=True)
    print(f"[1/4] synthetic scenes in {scenes}")
    print(format_statistics(scene_statistics(scenes)))

    print(f"[2/4] pretraining {method} (tiny preset) on the train split")
    run = pretrain(
        method=method, data=str(scenes), out=out / f"{method}-tiny", preset="tiny", steps=steps
    )
    records = read_metrics(run)
    print(_training_summary(records))

    print("[3/4] evaluating the trained teacher and a random-init ViT on the val split")
    rows = _evaluate_all(run, scenes, run / "eval", f"{method} tiny")
    table = _format_rows(rows)
    print(table)
    (run / "eval" / "demo_summary.json").write_text(json.dumps(rows, indent=2) + "\n")

    print("[4/4] pictures of val scenes and export to timm format")
    pictures = _pictures(run, scenes)
    from densessl.export import export_backbone

    export = export_backbone(run, run / "export")
    report = _write_report(run, method, records, table, pictures, export)
    print(f"report: {report}")
    print(f"run directory: {run}  (config.yaml, metrics.jsonl, checkpoints/, eval/, pictures/)")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return run


def _pictures(run: Path, scenes: Path, count: int = 4) -> dict[str, list[Path]]:
    from densessl.viz.panels import visualize

    val = (scenes / "splits" / "val.txt").read_text().split()[:count]
    files = [scenes / "images" / f"{name}.png" for name in val]
    return {
        tag: visualize(backbone, files, run / "pictures" / tag, size=192, progress=False)
        for tag, backbone in (("trained", str(run)), ("random", f"random:{run}"))
    }


def _write_report(
    run: Path,
    method: str,
    records: list[dict[str, Any]],
    table: str,
    pictures: dict[str, list[Path]],
    export: Path,
) -> Path:
    lines = [
        f"# densessl demo: {method} (tiny preset) on synthetic scenes",
        "",
        f"Training: {_training_summary(records)}.",
        "",
        "## Dense evaluation on the val split (mIoU, %)",
        "",
        "```",
        table,
        "```",
        "",
        "## Feature pictures (input | PCA of patch features | k-means | CLS attention)",
        "",
    ]
    for tag, paths in pictures.items():
        lines += [f"### {tag}", ""]
        lines += [f"![{tag} {p.stem}]({p.relative_to(run).as_posix()})" for p in paths]
        lines.append("")
    lines += [f"Exported teacher backbone (timm format): `{export}`", ""]
    report = run / "report.md"
    report.write_text("\n".join(lines))
    return report
