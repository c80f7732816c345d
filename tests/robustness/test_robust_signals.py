"""SIGTERM and SIGINT: a checkpoint at the next step boundary, a non-zero exit status that
says "interrupted, resumable" (143 / 130), and a resume equal to a straight run bit for bit.

SIGTERM is what SLURM, Docker and Kubernetes send before they kill a job; SIGINT is Ctrl-C,
which a terminal sends to the whole process group (DataLoader workers included).
Already covered elsewhere: ``tests/test_train.py::test_resume_is_bitwise_exact`` (in-process
stop and resume), ``::test_sigkill_then_resume_matches_a_straight_run``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from densessl.train.signals import StopSignals, TrainingInterrupted
from densessl.train.trainer import Trainer, read_metrics
from helpers import ROBUST_RUN as TINY
from helpers import robust_config as tiny_config

STEPS = 30
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("DENSESSL_DEBUG", None)


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "densessl", "pretrain", "--preset", "tiny", "--out", str(out),
            *TINY, f"optim.steps={STEPS}", "train.checkpoint_every=1000", *extra]  # fmt: skip


def _model(run: Path) -> tuple[dict[str, torch.Tensor], int]:
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return state["model"], int(state["step"])


def _signal_when_training(proc: subprocess.Popen, run: Path, signum: int, group: bool) -> None:
    """Send ``signum`` once the run has logged 3 steps (so it is training, not starting)."""
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be signalled"
    (os.killpg if group else os.kill)(proc.pid, signum)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_saves_exits_143_and_resumes_bit_exactly(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(_cli(straight), check=True, capture_output=True, env=ENV, timeout=300)
    proc = subprocess.Popen(
        _cli(stopped), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    _signal_when_training(proc, stopped, signal.SIGTERM, group=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    _, step = _model(stopped)  # the only checkpoint: written because of the signal
    assert 3 <= step < STEPS
    assert f"interrupted by SIGTERM at step {step}" in err and "resume" in err
    subprocess.run(_cli(stopped), check=True, capture_output=True, env=ENV, timeout=300)
    a, step_a = _model(straight)
    b, step_b = _model(stopped)
    assert step_a == step_b == STEPS
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [r["step"] for r in read_metrics(stopped)] == list(range(1, STEPS + 1))


@pytest.mark.skipif(os.name != "posix", reason="POSIX process groups")
def test_sigint_to_the_process_group_with_dataloader_workers_saves_and_exits_130(tmp_path):
    """Ctrl-C reaches the DataLoader workers too; they must not die before the checkpoint
    (without ``ignore_stop_signals`` the main process fails: "DataLoader worker exited")."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(run, "data.num_workers=2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,  # its own process group, as a terminal job has
    )
    _signal_when_training(proc, run, signal.SIGINT, group=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "DataLoader worker" not in err
    _, step = _model(run)
    assert 3 <= step < STEPS
    assert f"interrupted by SIGINT at step {step}" in err


def _signal_self_at(trainer: Trainer, monkeypatch, at_step: int, signum: int) -> None:
    original = trainer.method.loss

    def loss(batch, info):
        if info.step == at_step:
            os.kill(os.getpid(), signum)  # delivered right away, in the middle of the step
        return original(batch, info)

    monkeypatch.setattr(trainer.method, "loss", loss)


def test_signal_stops_at_the_next_step_boundary_with_a_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("optim.steps=8", "train.checkpoint_every=100"), tmp_path / "r")
    _signal_self_at(trainer, monkeypatch, 2, signal.SIGTERM)  # during step 3 (0-based 2)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 3") as info:
        trainer.fit()
    assert info.value.exit_code == 143 and info.value.step == 3
    assert _model(tmp_path / "r")[1] == 3
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_signal_during_the_last_step_ends_normally(tmp_path, monkeypatch):
    """The run is complete: nothing to resume, so no interrupted status."""
    trainer = Trainer(tiny_config("optim.steps=4"), tmp_path / "r")
    _signal_self_at(trainer, monkeypatch, 3, signal.SIGINT)
    assert trainer.fit() == tmp_path / "r"
    assert _model(tmp_path / "r")[1] == 4


def test_processes_agree_on_one_signal():
    """OR over processes of the per-signal flags; SIGTERM (the scheduler's) wins."""
    signals = StopSignals()
    assert signals.agree([False, False]) is False and signals.agreed is None
    assert signals.agree([False, True]) is True and signals.agreed == signal.SIGINT
    assert signals.agree([True, True]) is True and signals.agreed == signal.SIGTERM
    error = TrainingInterrupted(signal.SIGINT, 7, Path("run/checkpoints/last.pt"))
    assert error.exit_code == 130 and "step 7" in str(error)


def _signalled_worker(rank: int, init_file: str, out: str) -> None:
    """Rank 1 alone gets SIGTERM during step 2 (0-based 1); log steps are every 2nd."""
    import json

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        config = tiny_config("optim.steps=8", "train.log_every=2", "train.device=cpu")
        trainer = Trainer(config, Path(out) / "run")
        if rank == 1:
            original = trainer.method.loss

            def loss(batch, info):
                if info.step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(batch, info)

            trainer.method.loss = loss
        try:
            trainer.fit()
            outcome = {"finished": True}
        except TrainingInterrupted as err:
            outcome = {"signum": err.signum, "step": err.step, "code": err.exit_code,
                       "main": err.is_main}  # fmt: skip
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_processes_stop_together_at_the_next_log_step(tmp_path):
    """A signal seen by one process only: every process stops at the same log step with the
    same exit status, after one shared checkpoint."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_signalled_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes == [
        {"signum": int(signal.SIGTERM), "step": 2, "code": 143, "main": True},
        {"signum": int(signal.SIGTERM), "step": 2, "code": 143, "main": False},
    ]
    assert _model(tmp_path / "run")[1] == 2
