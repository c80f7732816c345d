"""Interrupted runs: SIGKILL at any moment (also mid checkpoint write), disk full, torn logs.

Already covered elsewhere (not repeated here): ``tests/train/test_trainer.py`` —
``test_sigkill_then_resume_matches_a_straight_run`` (CLI process killed between periodic
checkpoints), ``test_resume_is_bitwise_exact`` (stop and resume in process),
``test_resume_with_different_config_is_refused``; ``tests/io/test_checkpoint.py`` —
``test_failed_write_keeps_previous_checkpoint`` (disk full inside ``save_atomic``).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densessl.io.checkpoint import load_training_state
from densessl.train.run_dir import RunDirectory
from densessl.train.trainer import Trainer
from helpers import robust_config

DRIVER = Path(__file__).with_name("_kill_driver.py")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill driver forks training children")
def test_sigkill_at_random_moments_and_mid_write_then_resume_equals_straight_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["straight_status"] == 0 and report["final_status"] == 0
    kills = report["kills"]
    assert all(k["signaled"] for k in kills), kills  # every attempt really died by SIGKILL
    # Killed inside torch.save (half the bytes written) and just before the rename: the
    # temp file is left behind, but last.pt is the previous complete checkpoint.
    assert kills[0]["sabotage"] == "torch.save" and kills[0]["temp_files"] == 1
    assert kills[0]["step"] == 2
    assert kills[1]["sabotage"] == "os.replace" and kills[1]["temp_files"] == 1
    assert kills[1]["step"] == 3
    # After every kill, every *.pt file loads (never half-written) ...
    assert all(not k["bad"] for k in kills) and not report["final"]["bad"]
    # ... progress was made, and stale temp files are cleared when the run resumes.
    steps = [k["step"] for k in kills]
    assert steps == sorted(steps) and steps[-1] < report["steps"][0]
    assert report["final"]["temp_files"] == 0
    # The resumed run equals the straight run bit for bit; its log has every step once.
    assert report["steps"][0] == report["steps"][1]
    assert report["differing"] == []
    assert report["metric_steps"] == list(range(1, report["steps"][0] + 1))


def test_disk_full_during_training_checkpoint_keeps_previous(tmp_path, monkeypatch):
    import densessl.io.checkpoint as ckpt

    trainer = Trainer(robust_config("optim.steps=6", "train.checkpoint_every=2"), tmp_path / "r")
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint: some bytes written, then ENOSPC
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    state = load_training_state(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["step"] == 2
    assert list((tmp_path / "r" / "checkpoints").glob(".*.tmp")) == []
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    Trainer(robust_config("optim.steps=6", "train.checkpoint_every=2"), tmp_path / "r").fit()
    assert load_training_state(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 6


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare({"method": "x"})
    good = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    run.metrics_path.write_text("\n".join(good) + '\n{"step": 4, "lo')  # killed mid-line
    run.truncate_metrics(2)
    assert [json.loads(x)["step"] for x in run.metrics_path.read_text().splitlines()] == [1, 2]


def test_stale_checkpoint_temp_files_removed_on_start(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    stale = run.checkpoints / ".last.pt.abc123xy.tmp"  # as tempfile.mkstemp names it
    stale.write_bytes(b"half a checkpoint")
    run.prepare({"method": "x"})
    assert not stale.exists()
