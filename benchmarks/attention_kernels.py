"""Fused vs explicit block attention: backbone forward + backward time per kernel and dtype.

    python benchmarks/attention_kernels.py --device cpu --threads 2
    python benchmarks/attention_kernels.py --device cuda --dtypes bf16 fp32

Builds the same :class:`densessl.models.vit.ViTBackbone` with ``backbone.attention=fused`` and
``=explicit`` (same weights) and times ``tokens()`` forward + backward of a dummy loss for a
few (backbone, batch, image size) cases, after warm-up. This is the measurement behind
``backbone.attention=auto`` (:mod:`densessl.models.attention`). Prints a markdown table; ``--json``
writes the rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from densessl.models.vit import BackboneConfig, build_backbone

#: name → (BackboneConfig kwargs, batch, image side)
CASES = {
    "vit_small/16 16x224": ({"arch": "vit_small", "patch_size": 16}, 16, 224),
    "vit_small/16 64x96": ({"arch": "vit_small", "patch_size": 16}, 64, 96),
    "tiny preset 32x64": (
        {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4},
        32,
        64,
    ),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": None}


def time_step(attention: str, case: str, dtype: str, device: torch.device, reps: int) -> float:
    """Mean seconds of one forward + backward after two warm-up steps."""
    kwargs, batch, size = CASES[case]
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(**kwargs, attention=attention)).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    autocast_dtype = DTYPES[dtype]

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            _, patches = backbone.tokens(images)
        patches.float().square().mean().backward()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    print("| case | dtype | fused ms | explicit ms | fused / explicit |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        for case in args.cases:
            fused = time_step("fused", case, dtype, device, args.reps)
            explicit = time_step("explicit", case, dtype, device, args.reps)
            rows.append({"case": case, "dtype": dtype, "fused_s": fused, "explicit_s": explicit})
            print(
                f"| {case} | {dtype} | {1000 * fused:.0f} | {1000 * explicit:.0f} "
                f"| {fused / explicit:.2f} |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
