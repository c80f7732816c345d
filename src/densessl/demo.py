"""The end-to-end demo on the embedded default data (the README's first command).

Writes synthetic scenes in the world of the shipped DINO base (``densessl:miniature-base``:
gray distinct-cue scenes, 1-3 large objects), post-trains a method's tiny preset from that
base on the train split (Leopart by default: the paper's setting, a dense objective
fine-tuning a pretrained DINO), evaluates the post-trained teacher, the base it started from
and a random-init backbone of the same architecture on the val split with the three dense
protocols (linear probe, overclustering, dense retrieval), reports the gain over the base,
draws the base's and the post-trained teacher's feature pictures of the same val scenes side
by side, exports the teacher to timm format, and writes ``report.md`` in the run directory.
``init=None`` (``densessl demo --init none``) pretrains from scratch on the default scenes
instead, with the preset's own step count. ``precision`` is the training's
``train.precision`` (``auto`` picks bf16 only where the CPU runs it natively; ``fp32`` times
the demo as an AVX2-only CPU would run it, see ``benchmarks/demo_timing.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from densessl.data.scenes.dataset import (
    SceneConfig,
    SyntheticScenes,
    format_statistics,
    scene_statistics,
    write_scenes,
)
from densessl.errors import ConfigError
from densessl.methods.base import get_method
from densessl.train.trainer import pretrain, read_metrics

PROTOCOLS = ("linear", "cluster", "retrieval")

#: ``train.precision`` values the demo's training takes (fp16 is unusable on CPUs).
PRECISIONS = ("auto", "fp32", "bf16")

#: The base the demo post-trains from (:mod:`densessl.models.shipped`).
DEFAULT_INIT = "densessl:miniature-base"

#: Post-training steps when none are given (from scratch: the preset's own count).
POST_TRAINING_STEPS = 150


def _scene_config(init: str | None) -> SceneConfig:
    """The scenes of ``init``'s world: a shipped base's own, else the default scenes."""
    from densessl.models.shipped import PREFIX, SHIPPED, is_shipped, shipped_folder

    if init is None or not is_shipped(init):
        return SceneConfig()
    name = init[len(PREFIX) :]
    shipped_folder(name)  # an unknown name or damaged weights fail before anything is written
    # The shipped ``scenes`` are SyntheticScenes options: let the dataset map them.
    return SyntheticScenes(num_images=1, **SHIPPED[name].scenes).config


def _evaluate_all(backbones: list[tuple[str, str, str]], scenes: Path, out: Path) -> list[dict]:
    """Every protocol for every ``(label, tag, backbone)``; results in ``out/<protocol>_<tag>``."""
    from densessl.evaluation.api import evaluate

    rows = []
    for name, tag, backbone in backbones:
        for protocol in PROTOCOLS:
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
                rows.append({"backbone": name, "tag": tag, "eval": protocol, **row})
            print(f"  {name:<22} {protocol:<10} done ({record['seconds']:.0f} s)")
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
    lines = [f"{'backbone':<22} {'eval':<10} {'result':<6} {'matching':<10} {'mIoU':>13}"]
    for r in rows:
        std = f" ± {100 * r['std']:.1f}" if r.get("std") is not None else ""
        matching = r["matching"].split(" ")[0]
        miou = f"{100 * r['miou']:.1f}{std}"
        lines.append(
            f"{r['backbone']:<22} {r['eval']:<10} {r['result']:<6} {matching:<10} {miou:>13}"
        )
    protocols = {r["eval"]: r["protocol"] for r in rows}
    lines += [f"  {name}: {words}" for name, words in protocols.items()]
    return "\n".join(lines)


def _gains(rows: list[dict[str, Any]], against: str) -> str:
    """Post-trained minus ``against`` (``"base"`` or ``"random"``), per protocol and result."""
    by = {(r["tag"], r["eval"], r["result"]): r["miou"] for r in rows}
    parts = [
        f"{protocol} {result} {100 * (miou - by[(against, protocol, result)]):+.1f}"
        for (tag, protocol, result), miou in by.items()
        if tag == "trained" and (against, protocol, result) in by
    ]
    return ", ".join(parts)


def run_demo(
    out: Path,
    steps: int | None = None,
    num_images: int = 1000,
    method: str = "leopart",
    init: str | None = DEFAULT_INIT,
    precision: str = "auto",
) -> Path:
    """Run the demo into ``out`` and return the training run directory.

    ``init``: the backbone to post-train (anything ``densessl pretrain --init`` takes; the
    default is the shipped DINO base, whose scenes the demo draws), or None to pretrain
    from scratch on the default scenes. ``steps``: training steps (default
    :data:`POST_TRAINING_STEPS` after a base, the preset's own count from scratch).
    ``precision``: ``train.precision`` of the training (auto, fp32, bf16)."""
    start = time.perf_counter()
    get_method(method)  # an unknown name fails before the scenes are written
    if precision not in PRECISIONS:
        raise ConfigError(
            f"--precision: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    config = _scene_config(init)
    out = Path(out)
    scenes = out / "scenes"
    if not (scenes / "classes.json").is_file():
        write_scenes(scenes, num_images, config.size, seed=0, config=config, progress=True)
    print(f"[1/4] synthetic scenes in {scenes}")
    print(format_statistics(scene_statistics(scenes)))

    if init is None:
        print(f"[2/4] pretraining {method} (tiny preset) from scratch on the train split")
        name, label = f"{method}-tiny", f"{method} tiny"
    else:
        steps = POST_TRAINING_STEPS if steps is None else steps
        print(f"[2/4] post-training {method} (tiny preset) from {init} on the train split")
        name, label = f"{method}-from-base", f"{method} post-trained"
    run = pretrain(
        method=method,
        data=str(scenes),
        out=out / name,
        preset="tiny",
        steps=steps,
        init=init,
        overrides=[f"train.precision={precision}"],
    )
    records = read_metrics(run)
    print(_training_summary(records))

    print("[3/4] evaluating the trained teacher, its base and a random-init ViT on the val split")
    backbones = [(label, "trained", str(run))]
    if init is not None:
        backbones.append(("base", "base", init))
    backbones.append(("random init", "random", f"random:{run}"))
    rows = _evaluate_all(backbones, scenes, run / "eval")
    table = _format_rows(rows)
    print(table)
    gains = _gains(rows, "base" if init is not None else "random")
    print(f"gain over the {'base' if init is not None else 'random init'} (mIoU points): {gains}")
    (run / "eval" / "demo_summary.json").write_text(json.dumps(rows, indent=2) + "\n")

    print("[4/4] pictures of val scenes and export to timm format")
    pictures = _pictures(run, scenes, [(tag, backbone) for _, tag, backbone in backbones])
    from densessl.export import export_backbone

    export = export_backbone(run, run / "export")
    timing = _timing(time.perf_counter() - start, precision)
    report = _write_report(run, method, init, records, table, gains, pictures, export, timing)
    print(f"report: {report}")
    print(f"run directory: {run}  (config.yaml, metrics.jsonl, checkpoints/, eval/, pictures/)")
    print(timing)
    return run


def _timing(seconds: float, precision: str) -> str:
    """``demo finished in N s on <CPU or GPU> (<threads>, training precision ...)``."""
    import platform

    import torch

    from densessl.train.precision import resolve_device, resolve_precision

    device = resolve_device("auto")
    dtype, _ = resolve_precision(precision, device)
    used = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpu = _cpu_model() or platform.processor() or "CPU"
        where = f"{cpu}, {torch.get_num_threads()} threads"
    return f"demo finished in {seconds:.0f} s on {where} (training precision {precision}: {used})"


def _cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return None


def _pictures(
    run: Path, scenes: Path, backbones: list[tuple[str, str]], count: int = 4
) -> dict[str, list[Path]]:
    """Feature panels of the first ``count`` val scenes per backbone, and (after a base) the
    base's and the post-trained teacher's panels of each scene stacked in one picture."""
    from densessl.viz.panels import visualize

    val = (scenes / "splits" / "val.txt").read_text().split()[:count]
    files = [scenes / "images" / f"{name}.png" for name in val]
    panels = {
        tag: visualize(backbone, files, run / "pictures" / tag, size=192, progress=False)
        for tag, backbone in backbones
    }
    if "base" in panels:
        panels = {"base vs post-trained": _stack(panels["base"], panels["trained"], run)} | panels
    return panels


def _stack(top: list[Path], bottom: list[Path], run: Path) -> list[Path]:
    """Each pair of panels one above the other, labelled, in ``pictures/side_by_side``."""
    from PIL import Image, ImageDraw

    folder = run / "pictures" / "side_by_side"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for upper, lower in zip(top, bottom, strict=True):
        images = [Image.open(upper).convert("RGB"), Image.open(lower).convert("RGB")]
        width = max(im.width for im in images)
        strip = 14
        canvas = Image.new("RGB", (width, sum(im.height + strip for im in images)), "white")
        draw, y = ImageDraw.Draw(canvas), 0
        for label, image in zip(("base", "post-trained"), images, strict=True):
            draw.text((4, y + 1), label, fill="black")
            canvas.paste(image, (0, y + strip))
            y += image.height + strip
        path = folder / upper.name
        canvas.save(path)
        written.append(path)
    return written


def _write_report(
    run: Path,
    method: str,
    init: str | None,
    records: list[dict[str, Any]],
    table: str,
    gains: str,
    pictures: dict[str, list[Path]],
    export: Path,
    timing: str,
) -> Path:
    start = f"post-trained from `{init}`" if init is not None else "from scratch"
    against = "the base it started from" if init is not None else "random init"
    lines = [
        f"# densessl demo: {method} (tiny preset) {start}, on synthetic scenes",
        "",
        f"Training: {_training_summary(records)}.",
        "",
        "## Dense evaluation on the val split (mIoU, %)",
        "",
        "```",
        table,
        "```",
        "",
        f"Gain over {against} (mIoU points): {gains}.",
        "",
        "## Feature pictures (input | PCA of patch features | k-means | CLS attention)",
        "",
    ]
    for tag, paths in pictures.items():
        lines += [f"### {tag}", ""]
        lines += [f"![{tag} {p.stem}]({p.relative_to(run).as_posix()})" for p in paths]
        lines.append("")
    lines += [f"Exported teacher backbone (timm format): `{export}`", ""]
    lines += [f"{timing[0].upper()}{timing[1:]}.", ""]
    report = run / "report.md"
    report.write_text("\n".join(lines))
    return report
