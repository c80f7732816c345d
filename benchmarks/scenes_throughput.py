"""Throughput of the synthetic-scene generator: images/s on one core at several sizes.

    python benchmarks/scenes_throughput.py [--seconds 2] [--sizes 64 96 224] [--json out.json]

Single process, numpy/BLAS and torch limited to one thread. ``render`` is
``render_scene`` alone; ``dataset`` is ``SyntheticScenes[i]`` (render + tensor conversion).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from densessl.data.scenes.dataset import SceneConfig, SyntheticScenes, render_scene  # noqa: E402


def _rate(fn: Callable[[int], object], seconds: float) -> float:
    """Images per second of ``fn(i)`` over at least ``seconds`` (after a short warm-up)."""
    for i in range(5):
        fn(i)
    count, start = 0, time.perf_counter()
    while True:
        fn(1000 + count)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 20:
            return count / elapsed


def main() -> None:
    """Print a table of images/s per size (and write it as JSON when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 224])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for size in args.sizes:
        config = SceneConfig(size=size)
        data = SyntheticScenes(num_images=10**6, size=size, split="all")
        render = _rate(lambda i, c=config: render_scene(i, 0, c), args.seconds)
        dataset = _rate(lambda i, d=data: d[i], args.seconds)
        rows.append({"size": size, "render_img_s": render, "dataset_img_s": dataset})

    print("scenes throughput (1 process, 1 thread)")
    print(f"{'size':>5}  {'render img/s':>12}  {'ms/img':>7}  {'dataset img/s':>13}")
    for r in rows:
        ms = 1000.0 / r["render_img_s"]
        print(f"{r['size']:>5}  {r['render_img_s']:12.0f}  {ms:7.2f}  {r['dataset_img_s']:13.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
