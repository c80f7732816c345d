"""The end-to-end demo on the embedded default data (the README's first command).

Generates synthetic scenes, prints their statistics, pretrains DINO's tiny preset on them and
summarises the run. Later stages (evaluation, pictures, export) join as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

from densessl.data.scenes import format_statistics, scene_statistics, write_scenes
from densessl.train import pretrain, read_metrics


def run_demo(out: Path, steps: int | None = None, num_images: int = 1000) -> Path:
    """Run the demo into ``out`` and return the pretraining run directory."""
    start = time.perf_counter()
    out = Path(out)
    scenes = out / "scenes"
    if not (scenes / "classes.json").is_file():
        write_scenes(scenes, num_images, 96, seed=0, progress=True)
    print(f"[1/2] synthetic scenes in {scenes}")
    print(format_statistics(scene_statistics(scenes)))

    print("[2/2] pretraining DINO (tiny preset) on the scenes")
    run = pretrain(
        method="dino", data=str(scenes), out=out / "dino-tiny", preset="tiny", steps=steps
    )
    records = read_metrics(run)
    first, last = records[0], records[-1]
    print(
        f"loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} "
        f"(step {last['step']}); teacher entropy {last['teacher_entropy']:.2f}, "
        f"batch entropy {last['teacher_batch_entropy']:.2f}; {last['img_s']:.0f} img/s"
    )
    print(f"run directory: {run}  (config.yaml, metrics.jsonl, checkpoints/)")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return run
