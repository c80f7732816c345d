"""The papers' table in miniature: every method, the same tiny budget, the same evaluation.

    python benchmarks/quality.py                          # full table (resumes, reuses cells)
    python benchmarks/quality.py --max-minutes 120        # one chunk; run again to continue
    python benchmarks/quality.py --rows dino leopart --seeds 1    # only these cells; the
                                                          # report still shows every seed
    python benchmarks/quality.py --report-only            # rewrite the report from the cache
    python benchmarks/quality.py --quick --out /tmp/q     # smoke mode (CI): pipeline + formats

Each registered method pretrains the same tiny ViT (128-d, 4 blocks, patch 8) on generated
scenes with the same budget (batch, optimizer steps, pretraining scenes, seeds); everything
else comes from the method's ``tiny`` preset. The teacher backbone is then evaluated on
held-out scenes (another scene seed) with the linear probe, overclustering (K = C Hungarian,
K = 4C many-to-one) and dense retrieval. Reference rows: one-hot labels as features (pixel
cells: the evaluator must score ~100; 8-px cells: the patch grid's own ceiling), a random-init
backbone (floor) and the same ViT trained supervised on the masks for the same steps
(ceiling), and two protocol-fitting ceilings with the same budget and crops
(``quality_ceilings.py``): ``supervised-image`` (CLS head on each crop's dominant object
class, the k-NN column's label) and ``supervised-match`` (InfoNCE on exact correspondences
between two views of a training scene, the PCK column's label).

A cell is one (row, seed). Its folder under ``--cache`` is named by a hash of everything that
decides its numbers (the resolved training config, the evaluation settings and the densessl
source code), holds the run with its checkpoints (written every few minutes; a killed cell
resumes from the last one) and, when finished, ``cell.json``. Re-running with nothing
changed trains nothing; changing the code or a setting starts new cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from densessl.train.signals import TrainingInterrupted
from quality_budget import FULL, QUICK, Budget, choose_budget, like_shipped
from quality_ceilings import TASK_FILES
from quality_cells import evaluate_backbone, hardware, train_row
from quality_report import write_report

__all__ = ["FULL", "QUICK", "Budget", "choose_budget", "like_shipped", "main", "run_cell"]

HERE = Path(__file__).resolve().parent
REFERENCE_ROWS = (
    "onehot-pixel",
    "onehot-patch",
    "random",
    "supervised",
    "supervised-image",
    "supervised-match",
)
METHOD_ORDER = ("dino", "selfpatch", "leopart", "loca", "flsl")


#: Modules (files, or folders under ``src/densessl/``) that cannot change a number of the table.
PRESENTATION_ONLY = (
    "__main__.py",
    "cli",
    "demo.py",
    "export.py",
    "viz",
)


def _module_file(root: Path, module: str) -> Path | None:
    parts = module.split(".")[1:]
    for candidate in (
        root.joinpath(*parts).with_suffix(".py"),
        root.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _imported_files(root: Path, start: set[Path]) -> set[Path]:
    """``start`` and every densessl module they import, transitively (read with ``ast``)."""
    import ast

    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                found = _module_file(root, name) if name.startswith("densessl") else None
                if found is not None:
                    todo.append(found)
    return seen


def code_version(row: str) -> str:
    """Hash of the densessl sources that can change ``row``'s numbers, and the version.

    Every module counts except presentation-only ones (CLI, demo, pictures, export) and the
    method packages (``methods/<name>/``) that neither the row's own method nor a shared
    module imports: adding or editing one method does not invalidate the cells of the
    others, while SelfPatch's cells still depend on the DINO loss it uses. The ceiling rows
    also hash their trainer, ``quality_ceilings.py``.
    """
    import densessl
    from densessl.methods.base import list_methods

    root = Path(densessl.__file__).resolve().parent
    methods = list(list_methods())
    specific = {p for m in methods for p in (root / "methods" / m).rglob("*.py")}
    shared = {
        p
        for p in root.rglob("*.py")
        if p not in specific and p.relative_to(root).parts[0] not in PRESENTATION_ONLY
    }
    if row in methods:
        shared |= set((root / "methods" / row).rglob("*.py"))
    files = _imported_files(root, shared)
    digest = hashlib.sha256(densessl.__version__.encode())
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    for path in TASK_FILES.get(row, ()):  # the ceilings' trainers live in the benchmark
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def registered_rows(post_training: bool = False) -> list[str]:
    """Reference rows, then every registered method; the post-training table adds ``base``
    (the starting weights, not trained further) after the random floor."""
    from densessl.methods.base import list_methods

    names = list_methods()
    ordered = [m for m in METHOD_ORDER if m in names]
    reference = list(REFERENCE_ROWS)
    if post_training:
        reference.insert(reference.index("random") + 1, "base")
    return [*reference, *ordered, *sorted(set(names) - set(ordered))]


def cell_folder(cache: Path, row: str, seed: int, spec: dict[str, Any], version: str) -> Path:
    text = json.dumps({"spec": spec, "code": version}, sort_keys=True, default=str)
    return cache / f"{row}-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def planned_cell_folder(cache: Path, row: str, seed: int, budget: Budget) -> Path:
    """Where the cell of ``row`` / ``seed`` under ``budget`` and the current code lives."""
    spec = train_row(row, seed, budget, dry=True)["spec"]
    return cell_folder(cache, row, seed, spec, code_version(row))


def _without_added_keys(spec: Any, older: Any) -> Any:
    """``spec`` without the dict keys ``older`` lacks, recursively (options added since)."""
    if isinstance(spec, dict) and isinstance(older, dict):
        return {k: _without_added_keys(v, older[k]) for k, v in spec.items() if k in older}
    return spec


def older_cell_folder(cache: Path, row: str, seed: int, budget: Budget) -> Path | None:
    """The newest finished cell of ``row`` / ``seed`` with today's spec but another code version.

    The report falls back to it (marked stale) so that a code change does not blank the table
    before the cells are recomputed; ``run_cell`` never reuses it. A config option added to
    the code since (a key the older spec lacks) does not stop the match: the older cell ran
    the code of its day, which the stale mark says.
    """
    spec = json.loads(json.dumps(train_row(row, seed, budget, dry=True)["spec"], default=str))
    found: list[tuple[str, Path]] = []
    for folder in cache.glob(f"{row}-seed{seed}-*"):
        done, written = folder / "cell.json", folder / "spec.json"
        if not (done.is_file() and written.is_file()):
            continue
        older = json.loads(written.read_text())
        if _without_added_keys(spec, older) == older:
            found.append((json.loads(done.read_text()).get("finished", ""), folder))
    return max(found)[1] if found else None


def run_cell(row: str, seed: int, budget: Budget, cache: Path, version: str) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; reuse ``cell.json`` when it exists."""
    trained = train_row(row, seed, budget, dry=True)
    folder = cell_folder(cache, row, seed, trained["spec"], version)
    done = folder / "cell.json"
    if done.is_file():
        record = json.loads(done.read_text())
        record["cached"] = True
        return record
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(trained["spec"], indent=1, default=str))
    start = time.perf_counter()
    trained = train_row(row, seed, budget, folder=folder)
    evaluation = evaluate_backbone(trained["extractor"], trained["eval_datasets"], budget)
    record = {
        "row": row,
        "seed": seed,
        "cell": folder.name,
        "code_version": version,
        "git_commit": _git_commit(),
        "training": trained["training"],
        "results": evaluation["results"],
        "summary": evaluation["summary"],
        "eval_seconds": evaluation["seconds"],
        "seconds_this_invocation": time.perf_counter() - start,
        "hardware": hardware(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    torch.save(evaluation["picture_features"], folder / "picture_features.pt")
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(done)
    record["cached"] = False
    return record


def _git_commit() -> str | None:
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def plan(rows: list[str], seeds: tuple[int, ...]) -> list[tuple[str, int]]:
    """Seed-major order, so that a partial table has every row at the same seed count. The
    one-hot rows are deterministic (no training): one cell each, nominally seed 0, whatever
    the seeds."""
    cells = [(row, 0) for row in rows if row.startswith("onehot")]
    for seed in seeds:
        cells += [(row, seed) for row in rows if not row.startswith("onehot")]
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: minutes, not hours")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="report folder")
    parser.add_argument("--cache", type=Path, default=None, help="cells (default: OUT/cache)")
    parser.add_argument("--rows", nargs="*", default=None, help="rows to run (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="start no cell after")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    parser.add_argument(
        "--scenes-like",
        default=None,
        metavar="NAME",
        help="draw the scenes of the shipped base densessl:NAME (its class set, colours, "
        "objects and radius; default --out: results/scenes-NAME)",
    )
    parser.add_argument(
        "--from-base",
        default=None,
        metavar="WEIGHTS",
        help="the post-training table: every method starts from these backbone weights "
        "(default --out: results/posttrain)",
    )
    args = parser.parse_args(argv)

    budget, folder = choose_budget(args.quick, args.scenes_like, args.from_base)
    if args.out == HERE / "results":
        args.out = folder
    run_seeds = tuple(args.seeds) if args.seeds else budget.seeds
    # --seeds picks the cells to run; the report always covers the budget's planned seeds
    budget = dataclasses.replace(budget, seeds=tuple(sorted({*budget.seeds, *run_seeds})))
    cache = args.cache or (args.out / "cache")
    every = registered_rows(post_training=budget.init is not None)
    rows = args.rows or every
    unknown = sorted(set(rows) - set(every))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {every}")
    start = time.perf_counter()
    records = []
    for row, seed in plan(rows, run_seeds):
        if args.report_only:
            break
        minutes = (time.perf_counter() - start) / 60
        if args.max_minutes is not None and minutes >= args.max_minutes:
            print(f"stopping after {minutes:.0f} min (--max-minutes); run again to continue")
            break
        print(f"[{time.strftime('%H:%M:%S')}] cell {row} seed {seed} ...", flush=True)
        try:
            record = run_cell(row, seed, budget, cache, code_version(row))
        except TrainingInterrupted as stop:  # SIGTERM / Ctrl-C: the cell's run checkpointed
            print(f"quality: cell {row} seed {seed} {stop}", file=sys.stderr)
            return stop.exit_code
        state = "cached" if record["cached"] else f"{record['seconds_this_invocation']:.0f} s"
        shown = ", ".join(f"{k} {v:.1f}" for k, v in record["results"].items())
        print(f"    {state}: {shown}", flush=True)
        records.append(record)
    command = "python benchmarks/quality.py" + (" --quick" if args.quick else "")
    if args.scenes_like is not None:
        command += f" --scenes-like {args.scenes_like}"
    if args.from_base is not None:
        command += f" --from-base {args.from_base}"
    expected, stale = {}, set()
    for row, seed in plan(every, budget.seeds):
        folder = planned_cell_folder(cache, row, seed, budget)
        older = (
            None
            if (folder / "cell.json").is_file()
            else older_cell_folder(cache, row, seed, budget)
        )
        if older is not None:
            folder = older
            stale.add((row, seed))
        expected[(row, seed)] = folder
    paths = write_report(args.out, expected, every, budget, command, args.quick, stale)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
