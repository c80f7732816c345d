"""The DINO base of the post-training miniature: train a recipe, measure its curve.

    python benchmarks/miniature_base.py --recipe fresh-colour            # train (resumes) + curve
    (a killed run resumes from its last checkpoint when started again)
    python benchmarks/miniature_base.py --report-only                    # rewrite the curve table
    python benchmarks/miniature_base.py --recipe base-gray --export      # + ship the final teacher

A recipe (``miniature_recipes.py``) is DINO's ``tiny`` preset plus overrides: scenes, augmentation,
budget. It is chosen by looking at **DINO and the supervised row only**: the base must carry
class structure (class η² ≥ 0.05, 7x random init; linear probe ≥ random + 10 mIoU on held-out
scenes) before any dense method is judged on it. Every ``--eval-every`` steps the trainer keeps
a checkpoint (``train.keep_every``); each kept teacher is evaluated on held-out scenes (another
scene seed, the recipe's class set and size) with class / position η² (``quality_diagnose``),
the linear probe and K=C / K=4C overclustering (the quality table's scenes presets).

A recipe's folder under ``--cache`` is named by a hash of the recipe and the evaluation settings
(not the code version: see :func:`recipe_folder`; ``provenance.json`` lists the code version of
every training segment); training resumes from its ``last.pt`` (written every few minutes),
each evaluation is cached as ``eval/step_XXXXXXX.json``.
Writes ``results/miniature/base_curve.{md,json}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miniature_recipes import RECIPES, Recipe

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "miniature"


@dataclass(frozen=True)
class EvalSpec:
    """Held-out scenes and protocol overrides of every evaluation along a curve."""

    eval_scenes: int = 1000
    eval_seed: int = 1000
    linear: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)


#: ``--quick`` (the test suite): a 4-step run on 40 scenes, evaluated cheaply every 2 steps.
QUICK_RECIPE = Recipe(
    "smoke mode", 4, ("data.scenes_num_images=40", "backbone.depth=1"), batch_size=4, eval_every=2
)
QUICK_EVAL = EvalSpec(
    eval_scenes=40,
    linear={"epochs": 1, "lr_step_epoch": 1},
    cluster={"seeds": [0], "n_init": 1, "iters": 3},
)


def resolved_config(recipe: Recipe, seed: int, every: int) -> Any:
    from densessl.config.presets import build_run_config
    from densessl.data.scenes.dataset import split_indices
    from densessl.methods.base import get_method

    base = build_run_config("dino", get_method("dino").Params, "tiny", list(recipe.overrides))
    epoch = len(split_indices(base.data.scenes_num_images, "train")) / recipe.batch_size
    overrides = [
        f"optim.warmup_epochs={recipe.warmup_steps / epoch}",
        f"optim.freeze_last_layer={recipe.freeze_steps / epoch}",
        f"optim.steps={recipe.steps}",
        f"data.batch_size={recipe.batch_size}",
        "data.path=scenes",
        f"data.scenes_size={recipe.scenes_size}",
        f"data.scenes_class_set={recipe.scenes_class_set}",
        "data.scenes_seed=0",
        "data.num_workers=1",
        f"train.seed={seed}",
        f"train.keep_every={every}",
        "train.checkpoint_every=200",
        "train.checkpoint_minutes=5",
        "train.progress=false",
        "train.precision=auto",
        *recipe.overrides,
    ]
    return build_run_config("dino", get_method("dino").Params, "tiny", overrides)


def recipe_folder(cache: Path, name: str, seed: int, spec: EvalSpec) -> Path:
    """The folder of ``name`` / ``seed``: keyed by the recipe as written and the evaluation
    settings, *not* by the code version. A base run takes hours across sessions; a code change
    between two of its segments must not restart it (the trainer refuses to resume when the
    resolved config changed). Each segment's code version is recorded in ``provenance.json``."""
    import dataclasses

    from densessl.evaluation.report import jsonable

    recipe = dataclasses.asdict(RECIPES[name])
    recipe.pop("note")
    text = json.dumps({"recipe": recipe, "seed": seed, "eval": jsonable(spec)}, sort_keys=True)
    return cache / f"{name}-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def record_segment(folder: Path, step: int) -> None:
    """Append (time, starting step, code version, git commit, hardware) to ``provenance.json``.

    The hardware (:func:`quality_cells.hardware`) includes the autocast dtype:
    ``train.precision=auto`` trains in bf16 where the CPU has it natively and in fp32
    elsewhere, so the segments of one run may differ in precision."""
    from quality import _git_commit, code_version
    from quality_cells import hardware

    path = folder / "provenance.json"
    segments = json.loads(path.read_text()) if path.is_file() else []
    segments.append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "from_step": step,
            "code_version": code_version("dino"),
            "git_commit": _git_commit(),
            "hardware": hardware(),
        }
    )
    path.write_text(json.dumps(segments, indent=1))


def eval_datasets(data: Any, spec: EvalSpec) -> dict[str, Any]:
    """Held-out scenes drawn like the run's ``data`` section (class set, size, geometry)."""
    from densessl.data.scenes.dataset import SyntheticScenes
    from densessl.data.sources import scene_config

    scene = scene_config(data)
    return {
        split: SyntheticScenes(spec.eval_scenes, seed=spec.eval_seed, split=split, config=scene)
        for split in ("train", "val")
    }


def measure(extractor: Any, datasets: dict[str, Any], size: int, spec: EvalSpec) -> dict:
    """Class / position η², linear probe and overclustering of one backbone (percent)."""
    import torch

    from densessl.evaluation.api import resolve_protocol
    from densessl.evaluation.embed import embed_dataset
    from densessl.evaluation.linear.probe import train_linear_probe
    from densessl.evaluation.overcluster import evaluate_overclustering
    from quality_diagnose import eta_squared, patch_classes

    train, val = datasets["train"], datasets["val"]
    cluster = resolve_protocol("cluster", "scenes", spec.cluster, size)
    linear = resolve_protocol("linear", "scenes", spec.linear, size)
    feats, labels = embed_dataset(
        extractor, val, cluster.image_size, cluster.mask_size, progress=False
    )
    n, h, w, d = feats.shape
    classes = patch_classes(labels, (h, w), val.num_classes).reshape(-1)
    flat = feats.reshape(-1, d).float()
    out = {
        "class_eta2": eta_squared(flat, classes),
        "position_eta2": eta_squared(flat, torch.arange(h * w).repeat(n)),
        "linear": 100 * train_linear_probe(extractor, train, val, linear, progress=False)["miou"],
    }
    clusters = evaluate_overclustering(extractor, val, cluster, progress=False)["results"]
    for key, entry in clusters.items():
        k = int(key.split("=")[1])
        name = "cluster_C" if k == val.num_classes else f"cluster_{k // val.num_classes}C"
        out[name] = 100 * entry["miou_mean"]
    return out


def _cached(path: Path, compute: Any) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    record = compute()
    record["eval_seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def run_recipe(
    name: str, seed: int, cache: Path, spec: EvalSpec, train: bool = True
) -> list[dict[str, Any]]:
    """Train (or resume) ``name`` and evaluate each kept checkpoint; the curve so far.

    ``train=False`` only evaluates the checkpoints kept so far (e.g. from a second process
    while the first one trains)."""
    import torch

    from densessl.evaluation.extractor import PatchFeatureExtractor
    from densessl.evaluation.features import build_extractor
    from densessl.models.vit import build_backbone
    from densessl.train.trainer import Trainer

    recipe = RECIPES[name]
    folder = recipe_folder(cache, name, seed, spec)
    folder.mkdir(parents=True, exist_ok=True)
    config = resolved_config(recipe, seed, recipe.eval_every)
    datasets = eval_datasets(config.data, spec)

    def initial() -> dict[str, Any]:
        torch.manual_seed(seed)
        backbone = build_backbone(config.backbone)
        source = {"kind": "module", "description": "random init"}
        extractor = PatchFeatureExtractor(backbone, backbone.patch_size, source)
        return measure(extractor, datasets, recipe.scenes_size, spec)

    _cached(folder / "eval" / "step_0000000.json", initial)
    run = folder / "run"
    if train and not (run / "done").is_file():
        last = run / "checkpoints" / "last.pt"
        step = int(torch.load(last, weights_only=True)["step"]) if last.is_file() else 0
        record_segment(folder, step)
        Trainer(config, run).fit()
        (run / "done").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    for ckpt in sorted((run / "checkpoints").glob("step_*.pt")):
        step = int(ckpt.stem.split("_")[1])
        path = folder / "eval" / f"step_{step:07d}.json"
        _cached(
            path,
            lambda c=ckpt: measure(
                build_extractor(c, which="teacher"), datasets, recipe.scenes_size, spec
            ),
        )
    return collect(folder)


def collect(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((folder / "eval").glob("step_*.json")):
        rows.append({"step": int(path.stem.split("_")[1]), **json.loads(path.read_text())})
    return rows


def write_report(cache: Path, out: Path) -> Path:
    """Every recipe folder in ``cache`` with its curve, as markdown + JSON. Curves of an
    earlier ``base_curve.json`` in ``out`` whose folders this cache lacks (runs of earlier
    sessions, on other machines) are kept."""
    old = out / "base_curve.json"
    curves: dict[str, Any] = json.loads(old.read_text()) if old.is_file() else {}
    for folder in sorted(cache.glob("*-seed*-*")):
        rows = collect(folder)
        if rows:
            name = folder.name.rsplit("-seed", 1)[0]
            note = RECIPES[name].note if name in RECIPES else "(recipe no longer listed)"
            curves[folder.name] = {"recipe": name, "note": note, "curve": rows}
    curves = dict(sorted(curves.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_curve.json").write_text(json.dumps(curves, indent=1))
    lines = ["# Miniature base: DINO curves on the scenes", ""]
    keys = ("class_eta2", "position_eta2", "linear", "cluster_C", "cluster_4C")
    for cell, entry in curves.items():
        lines += [f"## {cell}", "", entry["note"], ""]
        lines += ["| step | class η² | position η² | linear | K=C | K=4C |", "|---" * 6 + "|"]
        for row in entry["curve"]:
            shown = [f"{row[k]:.3f}" if k.endswith("eta2") else f"{row[k]:.1f}" for k in keys]
            lines.append(f"| {row['step']} | " + " | ".join(shown) + " |")
        lines.append("")
    path = out / "base_curve.md"
    path.write_text("\n".join(lines))
    return path


#: Where ``--export`` writes a finished recipe's final teacher: the package's shipped backbones.
SHIPPED = HERE.parent / "src" / "densessl" / "models" / "shipped"


def export_base(name: str, seed: int, cache: Path, spec: EvalSpec, out: Path) -> Path:
    """Export the final teacher of a finished run of ``name`` to ``out`` (a densessl export),
    with the recipe, its curve and the reproducing command added to ``meta.json``; prints the
    weights' sha256 (to record in ``densessl.models.shipped``)."""
    from densessl.export import export_backbone
    from densessl.models.shipped import sha256_of

    folder = recipe_folder(cache, name, seed, spec)
    run = folder / "run"
    if not (run / "done").is_file():
        raise SystemExit(f"miniature_base: {run} has not finished; train it first")
    export_backbone(run, out, which="teacher")
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text())
    recipe = RECIPES[name]
    meta["source"] = {"kind": "run", "recipe": name, "seed": seed, "cache_folder": folder.name}
    meta["recipe"] = {
        "note": recipe.note,
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "overrides": list(recipe.overrides),
        "scenes": {"class_set": recipe.scenes_class_set, "size": recipe.scenes_size},
    }
    meta["reproduce"] = (
        f"python benchmarks/miniature_base.py --recipe {name} --seed {seed} --export"
    )
    meta["curve"] = collect(folder)
    meta["provenance"] = json.loads((folder / "provenance.json").read_text())
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"exported {name} seed {seed} to {out}; model.safetensors sha256 "
          f"{sha256_of(out / 'model.safetensors')}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate the checkpoints kept so far, no training"
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode (the quick recipe)")
    parser.add_argument(
        "--export",
        nargs="?",
        const=SHIPPED / "miniature_base",
        type=Path,
        default=None,
        help="after training, export the final teacher (default: the shipped miniature base)",
    )
    args = parser.parse_args(argv)
    cache = args.cache or (args.out / "cache")
    spec, names = EvalSpec(), args.recipe
    if args.quick:
        RECIPES["quick"] = QUICK_RECIPE
        spec, names = QUICK_EVAL, ["quick"]
    for name in [] if args.report_only else names:
        print(f"[{time.strftime('%H:%M:%S')}] recipe {name} seed {args.seed}", flush=True)
        for row in run_recipe(name, args.seed, cache, spec, train=not args.eval_only):
            print("   ", json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    print("wrote", write_report(cache, args.out))
    if args.export is not None:
        for name in names:
            export_base(name, args.seed, cache, spec, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
