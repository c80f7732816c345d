"""Kill a tiny training run with SIGKILL again and again; print what was found as JSON.

Run as ``python _kill_driver.py WORKDIR`` (by ``test_robust_interrupt.py``). One fresh
interpreter imports torch once; every training attempt runs in a forked child (cheap: no
re-import), which the parent kills with SIGKILL:

1. inside ``torch.save`` of the 3rd checkpoint write, with half the bytes written;
2. after the temp file is complete but before the rename (``os.replace``);
3. at random moments (seeded), several times;

then the run is finished. After every kill each ``*.pt`` file must load; at the end the
resumed result must equal a straight run bit for bit. Single-threaded torch throughout
(set before any work, so forking is safe and results are bitwise reproducible).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from densessl.io.checkpoint import load_training_state  # noqa: E402
from densessl.train.trainer import Trainer, read_metrics  # noqa: E402
from helpers import robust_config  # noqa: E402

STEPS = 200  # far more than the random kills below can get through (they end ~0.5 s of training)


def _config():
    """The robustness tests' tiny run, writing a checkpoint every step (random kills often
    land in one)."""
    return robust_config("train.checkpoint_every=1", f"optim.steps={STEPS}")


def _self_kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(out: Path, sabotage: str | None) -> None:
    """Train (resuming) in this forked process; never returns."""
    try:
        if sabotage is not None:
            import densessl.io.checkpoint as ckpt

            calls = {"n": 0}
            if sabotage == "torch.save":
                real_save = torch.save

                def torn_save(obj, handle, *args, **kwargs):
                    calls["n"] += 1
                    if calls["n"] < 3:
                        return real_save(obj, handle, *args, **kwargs)
                    buf = io.BytesIO()
                    real_save(obj, buf)
                    handle.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    handle.flush()
                    _self_kill()

                ckpt.torch.save = torn_save  # type: ignore[assignment]
            elif sabotage == "os.replace":
                real_replace = os.replace

                def killed_replace(src, dst):
                    # os is shared: only the rename of a checkpoint counts.
                    calls["n"] += str(dst).endswith(".pt")
                    if calls["n"] < 2 or not str(dst).endswith(".pt"):
                        return real_replace(src, dst)
                    _self_kill()

                ckpt.os.replace = killed_replace  # type: ignore[assignment]
        Trainer(_config(), out).fit()
        os._exit(0)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(3)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _attempt(out: Path, sabotage: str | None = None, kill_after: float | None = None) -> int:
    """Fork a training child and return its wait status.

    With ``kill_after`` the child is SIGKILLed ``kill_after`` seconds after its first new
    checkpoint appeared (so it was training, not starting up); None lets it end.
    """
    last = out / "checkpoints" / "last.pt"
    before = _mtime(last)
    pid = os.fork()
    if pid == 0:
        _child(out, sabotage)
    if kill_after is not None:
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if deadline is None and _mtime(last) != before:
                deadline = time.monotonic() + kill_after
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


def _inspect(out: Path) -> dict:
    """Every ``*.pt`` must load; report the step of last.pt and the temp files left."""
    ckpts = out / "checkpoints"
    found = {"step": None, "temp_files": 0, "bad": []}
    if not ckpts.is_dir():
        return found
    for path in sorted(ckpts.glob("*.pt")):
        try:
            state = load_training_state(path)
        except Exception as err:
            found["bad"].append(f"{path.name}: {err}")
            continue
        if path.name == "last.pt":
            found["step"] = int(state["step"])
    found["temp_files"] = len(list(ckpts.glob(".*.tmp")))
    return found


def main(work: Path) -> None:
    straight, killed = work / "straight", work / "killed"
    report: dict = {"kills": []}
    report["straight_status"] = _attempt(straight)
    rng = random.Random(0)
    plan = [("torch.save", None), ("os.replace", None)]
    plan += [(None, rng.uniform(0.0, 0.1)) for _ in range(5)]
    for sabotage, delay in plan:
        status = _attempt(killed, sabotage, delay)
        entry = {"sabotage": sabotage, "delay": delay, "status": status, **_inspect(killed)}
        entry["signaled"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        report["kills"].append(entry)
    report["final_status"] = _attempt(killed)
    report["final"] = _inspect(killed)
    a = torch.load(straight / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    report["steps"] = [a["step"], b["step"]]
    report["differing"] = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    report["metric_steps"] = [r["step"] for r in read_metrics(killed)]
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
