"""How long the README's demo takes on this machine, natively and as an AVX2-only CPU runs it.

Each mode runs ``densessl demo`` in a fresh process into its own new folder and reads the
demo's own ``demo finished in N s`` line (wall time from the first scene to the report):

- ``auto``: the README command as is (``train.precision=auto``: bf16 where the CPU runs it
  natively, else fp32);
- ``fp32``: fp32 training on this CPU's own kernels;
- ``fp32-avx2``: fp32 training with every kernel library capped at AVX2
  (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``)
  — an emulation of an AVX2-only CPU of the same clock and cores, not a measurement on one.
  The script also times a bf16 and an fp32 1024² matmul under the cap, which shows that the
  cap holds (bf16 without native support is ~1000x slower than fp32).

Run it on an otherwise idle machine; compare modes as ratios measured in one run::

    python benchmarks/demo_timing.py --out /tmp/demo-timing       # all modes, ~15 min on 2 cores
    python benchmarks/demo_timing.py --out /tmp/t --modes fp32-avx2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

#: mode → (``densessl demo --precision``, kernel cap or None)
MODES: dict[str, tuple[str, str | None]] = {
    "auto": ("auto", None),
    "fp32": ("fp32", None),
    "fp32-avx2": ("fp32", "AVX2"),
}

FINISHED = re.compile(r"demo finished in (\d+) s on (.+) \(training precision (\w+): (\w+)\)")

MATMUL = """
import time, torch
a = torch.randn(1024, 1024)
for dtype in (torch.float32, torch.bfloat16):
    x = a.to(dtype)
    x @ x
    start = time.perf_counter()
    x @ x
    print(dtype, 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
"""


def mode_env(mode: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``mode``'s process (``base``: the current one)."""
    env = dict(os.environ if base is None else base)
    cap = MODES[mode][1]
    if cap is not None:
        env |= {
            "ATEN_CPU_CAPABILITY": cap.lower(),
            "ONEDNN_MAX_CPU_ISA": cap,
            "MKL_ENABLE_INSTRUCTIONS": cap,
        }
    return env


def parse_finished(output: str) -> dict[str, str | int]:
    """The demo's closing line: seconds, where it ran, requested and used precision."""
    found = FINISHED.findall(output)
    if not found:
        raise ValueError("the demo's output has no 'demo finished in N s on ...' line")
    seconds, where, requested, used = found[-1]
    return {"seconds": int(seconds), "where": where, "precision": requested, "used": used}


def matmul_gflops(env: dict[str, str]) -> dict[str, float]:
    """fp32 and bf16 1024² matmul GFLOP/s in a process with ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", MATMUL], env=env, capture_output=True, text=True, check=True
    )
    rates = {}
    for line in done.stdout.splitlines():
        name, rate = line.split()
        rates[name.removeprefix("torch.")] = float(rate)
    return rates


def time_mode(mode: str, out: Path, steps: int | None) -> dict[str, object]:
    precision, cap = MODES[mode]
    folder = out / mode
    command = [sys.executable, "-m", "densessl", "demo", "--out", str(folder)]
    command += ["--precision", precision] + ([] if steps is None else ["--steps", str(steps)])
    env = mode_env(mode)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo_timing: {mode} failed (exit {done.returncode}):\n{done.stderr}")
    return {
        "mode": mode,
        "cap": cap or "none",
        **parse_finished(done.stdout),
        "process_seconds": round(wall, 1),
        "matmul_gflops": matmul_gflops(env),
    }


def table(records: list[dict[str, object]]) -> str:
    head = (
        "| mode | kernel cap | precision (used) | demo s | process s | fp32 / bf16 matmul GFLOP/s |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in records:
        rates = r["matmul_gflops"]
        assert isinstance(rates, dict)
        lines.append(
            f"| {r['mode']} | {r['cap']} | {r['precision']} ({r['used']}) | {r['seconds']} | "
            f"{r['process_seconds']} | {rates['float32']:.0f} / {rates['bfloat16']:.1f} |"
        )
    where = {str(r["where"]) for r in records}
    return "\n".join(lines) + f"\n\nOn {', '.join(sorted(where))}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the runs")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=None, help="demo --steps (default: its own)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"--out {args.out} exists; give a new folder (runs are never overwritten)")
    args.out.mkdir(parents=True)
    records = []
    for mode in args.modes:
        print(f"[{time.strftime('%H:%M:%S')}] {mode} ...", flush=True)
        records.append(time_mode(mode, args.out, args.steps))
        print(f"    {records[-1]['seconds']} s", flush=True)
    (args.out / "timing.json").write_text(json.dumps(records, indent=1) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
