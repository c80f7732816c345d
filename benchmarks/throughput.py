"""Training throughput of every method next to a backbone-only step on the same crops.

    python benchmarks/throughput.py --preset tiny                 # CPU, about a minute
    python benchmarks/throughput.py --preset paper --arch vit_base --batch 64   # one GPU
    python benchmarks/throughput.py --methods dino --steps 2 --warmup 1 --set backbone.depth=1

For each method the real trainer step runs (``Trainer._train_step``: autocast, loss,
backward, per-parameter clipping, AdamW, EMA teacher, queues) on batches from the real
data path (``MultiCropDataset`` + ``DataLoader``, pinned memory, persistent workers). The
reference row ``<method>/backbone`` runs only the method's student backbone, forward and
backward on the same crops (one call per resolution) plus AdamW on its weights, on a batch
already in memory. Columns (``benchmarks/README.md``): images/s, ms/step, data-wait
fraction, peak memory, GFLOP/step counted by ``torch.utils.flop_counter`` (matmuls,
convolutions, attention; forward and backward), MFU = FLOP/s of the step / the peak matmul
FLOP/s measured in this run on this device and dtype, and the method/backbone step ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from densessl.config.presets import build_run_config
from densessl.data.views.multicrop import batch_to_device, collate_views, group_by_resolution
from densessl.methods.base import StepInfo, get_method, list_methods
from densessl.train.precision import autocast
from densessl.train.trainer import Trainer

PRESETS = {
    # The methods' CPU presets as they are (128-d ViT, 4 blocks, patch 8, 64/32 px crops).
    "tiny": {"config": "tiny", "overrides": []},
    # The papers' recipes (ViT-S/16 or --arch vit_base, 224/96 px crops) on synthetic scenes.
    "paper": {
        "config": "paper",
        "overrides": ["data.path=scenes", "data.scenes_size=256", "data.batch_size=64"],
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Best FLOP/s of large square matmuls in ``dtype`` on ``device`` (the MFU denominator).

    The best of three timed windows per size (CPU: 1024 and 2048, GPU: 4096 and 8192): one
    window on a shared or just-woken CPU can read far below the chip's rate, which would put
    MFU above 100 %.
    """
    sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        for _ in range(3):
            best = max(best, _timed_matmuls(a, b, device, seconds))
    return best


def _timed_matmuls(a: torch.Tensor, b: torch.Tensor, device: torch.device, seconds: float) -> float:
    n = a.shape[0]
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if count % 4 == 0:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * n**3 * count / elapsed


def _count_flops(fn: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _timed(
    step: Callable[[], float], warmup: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """``(seconds per step, data-wait fraction)``; ``step()`` returns its data wait."""
    for _ in range(warmup):
        step()
    _sync(device)
    _reset_peak(device)
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        wait += step()
    _sync(device)
    total = time.perf_counter() - start
    return total / steps, wait / total


def _method_row(trainer: Trainer, warmup: int, steps: int) -> dict[str, Any]:
    batches: Iterator[dict[str, Any]] = iter(trainer.make_loader())

    def step() -> float:
        fetch = time.perf_counter()
        batch = next(batches)
        wait = time.perf_counter() - fetch
        info = StepInfo(trainer.step, trainer.total_steps, trainer.steps_per_epoch)
        trainer._train_step(batch_to_device(batch, trainer.device), info)
        trainer.step += 1
        return wait

    seconds, wait = _timed(step, warmup, steps, trainer.device)
    peak = _peak_mib(trainer.device)
    flops = _count_flops(step)
    return {"seconds": seconds, "data_wait": wait, "peak_mib": peak, "flops": flops}


def _backbone_row(trainer: Trainer, warmup: int, steps: int) -> dict[str, Any]:
    """The method's student backbone alone: forward + backward on the same crops, AdamW."""
    backbone = trainer.method.student_backbone()
    batch = batch_to_device(collate_views([trainer.dataset[(0, i)] for i in range(
        trainer.config.data.batch_size)]), trainer.device)  # fmt: skip
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def step() -> float:
        with autocast(trainer.device, trainer.autocast_dtype):
            loss = sum(
                backbone.tokens(stacked)[1].float().square().mean()
                for _, stacked in group_by_resolution(batch["crops"])
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return 0.0

    seconds, wait = _timed(step, warmup, steps, trainer.device)
    peak = _peak_mib(trainer.device)
    return {"seconds": seconds, "data_wait": wait, "peak_mib": peak, "flops": _count_flops(step)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every requested method; returns the JSON document."""
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    methods = args.methods or sorted(list_methods())
    per_batch = args.batch
    rows: list[dict[str, Any]] = []
    peak_flops: float | None = None
    device_name = ""
    device, dtype = torch.device("cpu"), torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            overrides = [
                *preset["overrides"],
                "train.progress=false",
                f"train.device={args.device}",
                f"train.precision={args.precision}",
                f"data.num_workers={args.workers}",
                *([f"data.batch_size={per_batch}"] if per_batch else []),
                *([f"backbone.arch={args.arch}"] if args.arch else []),
                *args.set,
            ]
            cfg = build_run_config(method, get_method(method).Params, preset["config"], overrides)
            need = (2 * (args.warmup + args.steps) + 4) * cfg.data.batch_size
            if cfg.data.path in (None, "scenes"):
                cfg.data.scenes_num_images = max(cfg.data.scenes_num_images, need)
            cfg.optim.steps = 10**6  # schedules far from their end; no checkpoints are written
            trainer = Trainer(cfg, Path(tmp) / method)
            device = trainer.device
            if peak_flops is None:
                dtype = trainer.autocast_dtype or torch.float32
                peak_flops = peak_matmul_flops(device, dtype)
                device_name = (
                    torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else platform.processor() or platform.machine()
                )
            batch = cfg.data.batch_size * trainer.world_size
            views = cfg.views
            crops = f"{views.num_global}x{views.global_size}+{views.num_local}x{views.local_size}"
            arch = f"{cfg.backbone.arch}/{cfg.backbone.patch_size} d{cfg.backbone.resolved_depth}"
            reference = _backbone_row(trainer, args.warmup, args.steps)
            measured = _method_row(trainer, args.warmup, args.steps)
            for name, result in ((method, measured), (f"{method}/backbone", reference)):
                seconds = result["seconds"]
                rows.append(
                    {
                        "name": name,
                        "method": method,
                        "backbone": arch,
                        "crops": crops,
                        "batch": batch,
                        "images_per_s": batch / seconds,
                        "ms_per_step": 1000 * seconds,
                        "data_wait": result["data_wait"],
                        "peak_mib": result["peak_mib"],
                        "gflop_per_step": result["flops"] / 1e9,
                        "mfu": result["flops"] / seconds / peak_flops,
                        "ratio_to_backbone": seconds / reference["seconds"],
                    }
                )
            del trainer
    assert peak_flops is not None
    return {
        "preset": args.preset,
        "device": str(device),
        "device_name": device_name,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_matmul_tflops": peak_flops / 1e12,
        "warmup": args.warmup,
        "steps": args.steps,
        "rows": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The results as a markdown table (one row per method and per backbone reference)."""
    memory = "peak MiB (CUDA alloc)" if doc["device"].startswith("cuda") else "peak RSS MiB"
    head = (
        f"| run | backbone | crops | batch | img/s | ms/step | ×backbone | data wait | "
        f"{memory} | GFLOP/step | MFU |"
    )
    lines = [
        f"device {doc['device']} ({doc['device_name']}), {doc['dtype']}, {doc['threads']} "
        f"thread(s), torch {doc['torch']}, peak matmul {doc['peak_matmul_tflops'] * 1e3:.1f} "
        f"GFLOP/s; {doc['steps']} timed steps after {doc['warmup']} warm-up",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['name']} | {r['backbone']} | {r['crops']} | {r['batch']} | "
            f"{r['images_per_s']:.1f} | {r['ms_per_step']:.1f} | {r['ratio_to_backbone']:.2f} | "
            f"{r['data_wait']:.1%} | {r['peak_mib']:.0f} | {r['gflop_per_step']:.2f} | "
            f"{r['mfu']:.1%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--methods", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--arch", default=None, help="vit_tiny | vit_small | vit_base")
    parser.add_argument("--batch", type=int, default=None, help="images per process")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], help="extra config key=value")
    parser.add_argument("--json", default="throughput.json", help="write results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    doc = run(args)
    print(markdown(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
