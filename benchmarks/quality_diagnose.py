"""Why a row of the quality table scores what it scores: position vs content in its features.

Reads the finished cells of ``quality.py`` (same budget and code version; trains nothing) and,
for each, embeds the held-out validation scenes with the cell's backbone and measures:

- ``position η²``: the share of the (standardised) patch-feature variance explained by the
  token's grid position alone (between-position variance / total variance, averaged over
  feature dimensions); ``class η²``: the share explained by the patch's ground-truth class
  (majority label of its pixels). A backbone whose features are mostly a function of where a
  patch sits, not of what it shows, has a high position η² and a low class η².
- ``K=C`` / ``K=4C`` overclustering (the table's protocol) on **position-centred** features:
  the mean feature of each grid position, estimated on the train split of the held-out scenes,
  is subtracted before standardising. This is a diagnostic only — the benchmark's protocol is
  unchanged — that asks whether the content signal is there but hidden from k-means by a
  dominant positional one.
- the linear probe (the table's protocol) on the same position-centred features: does a
  row's linear-probe gain survive when the probe cannot read the grid position?
- the per-class IoU of the table's K=C Hungarian overclustering (which classes a row loses),
  and its mean over the stuff (background) and over the thing (object) classes;
- ``fg precision`` / ``fg recall``: Leopart's foreground mask (``loss_mask=fg``: the blurred
  CLS→patch attention keeping 60 % of its mass, small parts removed) of the held-out scenes
  against their thing patches; a random mask's precision is the thing share of the patches
  (``thing share``). Rows whose backbone has no CLS token leave these blank.

Writes ``results/diagnosis.md`` and ``results/diagnosis.json``. It needs each cell's weights
(``run/checkpoints``, ``supervised.pt``, ``ceiling.pt``), which are git-ignored and stay on
the machine that trained the cells; a cell without them is skipped with its path named. On a
fresh clone, recompute the cells into another cache first. Usage::

    python benchmarks/quality_diagnose.py [--rows dino loca] [--seeds 0 1 2]
    python benchmarks/quality.py --cache /tmp/cells && \
        python benchmarks/quality_diagnose.py --cache /tmp/cells     # fresh clone
    python benchmarks/quality_diagnose.py --report-only               # rewrite from the JSON
    python benchmarks/quality_diagnose.py --from-base densessl:miniature-base  # post-training
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent


class PositionCentred(nn.Module):
    """An extractor minus a fixed per-position mean feature (``[h, w, D]``)."""

    def __init__(self, extractor: nn.Module, position_mean: Tensor) -> None:
        super().__init__()
        self.extractor = extractor
        self.register_buffer("position_mean", position_mean)
        self.patch_size = extractor.patch_size
        self.source = {"kind": "diagnostic", "description": "position-centred"}

    def forward(self, images: Tensor) -> Tensor:
        return self.extractor(images).float() - self.position_mean


def patch_classes(labels: Tensor, grid: tuple[int, int], num_classes: int) -> Tensor:
    """Majority class of each patch's pixels (``[N, h, w]``; -1 where all pixels are ignored)."""
    n, size, _ = labels.shape
    h, w = grid
    valid = (labels >= 0) & (labels < num_classes)
    onehot = torch.zeros(n, num_classes, size, size)
    onehot.scatter_(1, labels.clamp(0, num_classes - 1)[:, None], valid[:, None].float())
    counts = nn.functional.adaptive_avg_pool2d(onehot, (h, w))
    best = counts.argmax(1)
    return torch.where(counts.sum(1) > 0, best, torch.full_like(best, -1))


def eta_squared(x: Tensor, groups: Tensor) -> float:
    """Between-group share of the variance of standardised ``x [P, D]`` (mean over dims)."""
    keep = groups >= 0  # -1: no group (ignored pixels only)
    x, groups = x[keep], groups[keep]
    x = (x - x.mean(0)) / x.std(0, correction=0).clamp_min(1e-6)
    sums = torch.zeros(int(groups.max()) + 1, x.shape[1]).index_add_(0, groups, x)
    counts = torch.bincount(groups).clamp_min(1).float()[:, None]
    between = ((sums / counts) ** 2 * counts).sum(0) / x.shape[0]
    return float(between.mean())


def diagnose_cell(extractor: Any, datasets: dict[str, Any], budget: Any) -> dict[str, Any]:
    from densessl.evaluation.api import resolve_protocol
    from densessl.evaluation.embed import embed_dataset
    from densessl.evaluation.linear.probe import train_linear_probe
    from densessl.evaluation.overcluster import evaluate_overclustering

    cluster = resolve_protocol("cluster", "scenes", budget.cluster, budget.scenes_size)
    linear = resolve_protocol("linear", "scenes", budget.linear, budget.scenes_size)
    train, val = datasets["train"], datasets["val"]
    sizes = (cluster.image_size, cluster.mask_size)
    train_feats, _ = embed_dataset(extractor, train, *sizes, progress=False)
    feats, labels = embed_dataset(extractor, val, *sizes, progress=False)
    n, h, w, d = feats.shape
    positions = torch.arange(h * w).repeat(n)
    classes = patch_classes(labels, (h, w), val.num_classes).reshape(-1)
    flat = feats.reshape(-1, d)
    out: dict[str, Any] = {
        "position_eta2": eta_squared(flat, positions),
        "class_eta2": eta_squared(flat, classes),
    }
    plain = evaluate_overclustering(extractor, val, cluster, progress=False)
    centred = PositionCentred(extractor, train_feats.mean(0))
    moved = evaluate_overclustering(centred, val, cluster, progress=False)
    out["centred_linear"] = (
        100 * train_linear_probe(centred, train, val, linear, progress=False)["miou"]
    )
    for key, entry in plain["results"].items():
        k = int(key.split("=")[1])
        name = "C" if k == val.num_classes else f"{k // val.num_classes}C"
        out[f"cluster_{name}"] = 100 * entry["miou_mean"]
        out[f"centred_{name}"] = 100 * moved["results"][key]["miou_mean"]
        if k == val.num_classes:
            per_class = entry["per_class_iou_mean"]
            names = val.class_names
            out["per_class_C"] = {n: 100 * v for n, v in zip(names, per_class, strict=True)}
            stuff = [100 * v for n, v in zip(names, per_class, strict=True) if _is_stuff(n)]
            things = [100 * v for n, v in zip(names, per_class, strict=True) if not _is_stuff(n)]
            out["stuff_C"], out["things_C"] = statistics.fmean(stuff), statistics.fmean(things)
    out.update(foreground_agreement(extractor, val, *sizes))
    return out


def _is_stuff(name: str) -> bool:
    return name.startswith("stuff/")


def foreground_agreement(
    extractor: Any, dataset: Any, image_size: int, mask_size: int
) -> dict[str, float]:
    """Leopart's attention foreground of ``dataset`` against its thing patches (see the module
    docstring); {} when the backbone has no CLS token."""
    from densessl.evaluation.preprocess import ResizedSegmentation, make_loader
    from densessl.evaluation.preprocess_labels import view_label_fn
    from densessl.models.vit import ViTBackbone
    from densessl.ops.attention_foreground import attention_foreground

    model = getattr(extractor, "model", None)
    if not isinstance(model, ViTBackbone) or not model.config.cls_token:
        return {}
    views = ResizedSegmentation(
        dataset, image_size, mask_size, label_resize=view_label_fn(image_size, mask_size, "floor")
    )
    stuff = torch.tensor([_is_stuff(n) for n in dataset.class_names])
    hits = kept = things = total = 0
    with torch.no_grad():
        for batch in make_loader(views, 50, 0):
            grid = (batch["image"].shape[-2] // model.patch_size,) * 2
            fg = attention_foreground(model.last_attention(batch["image"]), grid)
            classes = patch_classes(batch["label"], grid, len(stuff))
            valid = classes >= 0  # patches whose pixels are all ignored count nowhere
            thing = valid & ~stuff[classes.clamp(min=0)]
            hits += int((fg & thing).sum())
            kept += int((fg & valid).sum())
            things += int(thing.sum())
            total += int(valid.sum())
    return {
        "fg_precision": 100 * hits / max(kept, 1),
        "fg_recall": 100 * hits / max(things, 1),
        "thing_share": 100 * things / total,
    }


def load_extractor(row: str, seed: int, folder: Path, budget: Any) -> tuple[Any, dict]:
    """The finished cell's backbone (never trains: a cell without its weights is skipped)."""
    from quality_ceilings import CEILING_ROWS, CHECKPOINT
    from quality_cells import eval_datasets, train_row

    if row in ("random", "base", "supervised", *CEILING_ROWS):
        weights = {"supervised": "supervised.pt", **dict.fromkeys(CEILING_ROWS, CHECKPOINT)}
        if row in weights and not (folder / weights[row]).is_file():
            raise FileNotFoundError(folder / weights[row])
        got = train_row(row, seed, budget, folder=folder)  # random: seeded init; others load
        # (base: the post-training table's starting weights, Budget.init)
        return got["extractor"], got["eval_datasets"]
    from densessl.evaluation.features import build_extractor

    run = folder / "run"
    if not (run / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(run / "checkpoints" / "last.pt")
    return build_extractor(run, which="teacher"), eval_datasets(budget)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    digits = 3 if max(abs(v) for v in values) < 1.5 else 1  # η² vs mIoU %
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(
    records: list[dict[str, Any]],
    rows: list[str],
    out: Path,
    command: str = "python benchmarks/quality_diagnose.py",
) -> Path:
    keys = ("position_eta2", "class_eta2", "linear", "centred_linear")
    keys += ("cluster_C", "centred_C", "cluster_4C", "centred_4C")
    head = ["row", "seeds", "position η²", "class η²", "linear", "linear centred"]
    head += ["K=C", "K=C centred", "K=4C", "K=4C centred"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mine = [r for r in records if r["row"] == row]
        if mine:
            cells = [_mean_std([r[k] for r in mine]) for k in keys]
            lines.append(f"| {row} | {len(mine)} | " + " | ".join(cells) + " |")
    kinds = ("stuff_C", "things_C", "fg_precision", "fg_recall", "thing_share")
    kind_head = ["row", "K=C stuff", "K=C things", "fg precision", "fg recall", "thing share"]
    kind_lines = ["| " + " | ".join(kind_head) + " |", "|" + "---|" * len(kind_head)]
    for row in rows:
        mine = [r for r in records if r["row"] == row]
        if mine:
            cells = [_mean_std([r[k] for r in mine if k in r]) for k in kinds]
            kind_lines.append(f"| {row} | " + " | ".join(cells) + " |")
    names = [n for r in records[:1] for n in r["per_class_C"]]
    class_head = ["row"] + [n.split("/")[1] for n in names]
    class_lines = ["| " + " | ".join(class_head) + " |", "|" + "---|" * len(class_head)]
    for row in rows:
        mine = [r for r in records if r["row"] == row]
        if mine:
            means = [statistics.fmean(r["per_class_C"][n] for r in mine) for n in names]
            class_lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
    text = [
        "# Quality benchmark diagnosis: position vs content in the patch features",
        "",
        f"Command: `{command}` (reads the finished cells; trains "
        "nothing). Held-out validation scenes of the quality benchmark; mean ± std over seeds.",
        "",
        *lines,
        "",
        "η²: share of the standardised feature variance explained by the token's grid position "
        "or by its patch's class (0: none, 1: all). *Centred*: the table's linear probe and "
        "overclustering after subtracting each grid position's mean feature (estimated on the "
        "held-out train split) — a diagnostic, not the benchmark's protocol; linear, K=C and "
        "K=4C are the table's numbers.",
        "",
        "Per-class IoU % of the table's K=C Hungarian overclustering (mean over seeds):",
        "",
        *class_lines,
        "",
        "K=C IoU % averaged over the stuff (background) and the thing (object) classes, and "
        "Leopart's attention foreground (`loss_mask=fg`: blurred CLS attention, 60 % of its "
        "mass) against the thing patches of the held-out scenes: precision and recall %; a "
        "random mask's precision is the thing share of the patches. Blank: no CLS token.",
        "",
        *kind_lines,
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "diagnosis.md"
    path.write_text("\n".join(text))
    (out / "diagnosis.json").write_text(json.dumps(records, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from quality import choose_budget, planned_cell_folder, registered_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the cells of quality.py --quick")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="report folder")
    parser.add_argument("--cache", type=Path, default=None, help="cells (default: OUT/cache)")
    parser.add_argument("--rows", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--report-only", action="store_true", help="rewrite from diagnosis.json")
    parser.add_argument(
        "--scenes-like", default=None, metavar="NAME", help="as quality.py --scenes-like"
    )
    parser.add_argument(
        "--from-base", default=None, metavar="WEIGHTS", help="as quality.py --from-base"
    )
    args = parser.parse_args(argv)
    budget, folder = choose_budget(args.quick, args.scenes_like, args.from_base)
    if args.out == HERE / "results":
        args.out = folder
    command = "python benchmarks/quality_diagnose.py" + (" --quick" if args.quick else "")
    for flag, value in (("--scenes-like", args.scenes_like), ("--from-base", args.from_base)):
        command += f" {flag} {value}" if value is not None else ""
    every = registered_rows(post_training=budget.init is not None)
    rows = args.rows or [r for r in every if not r.startswith("onehot")]
    if args.report_only:
        records = json.loads((args.out / "diagnosis.json").read_text())
        print(f"wrote {write_report(records, rows, args.out, command)}")
        return 0
    seeds = args.seeds if args.seeds else list(budget.seeds)
    cache = args.cache or (args.out / "cache")
    records = []
    for row in rows:
        for seed in seeds:
            folder = planned_cell_folder(cache, row, seed, budget)
            if not (folder / "cell.json").is_file():
                print(f"skip {row} seed {seed}: no finished cell", flush=True)
                continue
            start = time.perf_counter()
            try:
                extractor, datasets = load_extractor(row, seed, folder, budget)
            except FileNotFoundError as missing:
                print(f"skip {row} seed {seed}: its weights {missing} are missing", flush=True)
                continue
            table = json.loads((folder / "cell.json").read_text())["results"]
            record = {"row": row, "seed": seed, "linear": table["linear"]}
            record.update(diagnose_cell(extractor, datasets, budget))
            records.append(record)
            shown = {k: round(v, 3) for k, v in record.items() if isinstance(v, float)}
            print(f"{row} seed {seed} ({time.perf_counter() - start:.0f} s): {shown}", flush=True)
    if not records:
        print("no finished cells to diagnose", file=sys.stderr)
        return 1
    # Keep the cells diagnosed before whose weights are not on this machine (git-ignored).
    earlier = args.out / "diagnosis.json"
    if earlier.is_file():
        records = merge_records(json.loads(earlier.read_text()), records)
    shown = [r for r in every if any(record["row"] == r for record in records)]
    print(f"wrote {write_report(records, shown, args.out, command)}")
    return 0


def merge_records(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` records with each (row, seed) diagnosed again replaced by its ``new`` one."""
    redone = {(r["row"], r["seed"]) for r in new}
    kept = [r for r in earlier if (r["row"], r["seed"]) not in redone]
    return kept + new


if __name__ == "__main__":
    sys.exit(main())
