"""The trainer (densessl.train.trainer) on scenes: learning, collapse diagnostics, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from densessl.errors import ConfigError
from densessl.train.trainer import Trainer, pretrain, read_metrics
from helpers import CPU, VIT_2X64, head_sizes, run_config, scenes

FAST = [*scenes(64, 8), *CPU, "train.log_every=2", *VIT_2X64, *head_sizes("dino", 128, 128, 64)]


def _config(*extra: str):
    return run_config("dino", *FAST, *extra)


def _params(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return state["model"], state["step"]


def test_resume_is_bitwise_exact(tmp_path):
    cfg = _config("optim.steps=12", "optim.warmup_epochs=0.5", "optim.freeze_last_layer=0.5")
    straight = Trainer(cfg, tmp_path / "straight").fit()
    Trainer(cfg, tmp_path / "resumed").fit(stop_at=5)
    _, step = _params(tmp_path / "resumed")
    assert step == 5
    Trainer(cfg, tmp_path / "resumed").fit()
    a, step_a = _params(straight)
    b, step_b = _params(tmp_path / "resumed")
    assert step_a == step_b == 12
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The resumed run's log has no duplicated or missing steps.
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed")]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_run_directory_layout_and_metrics(tmp_path):
    run = pretrain(method="dino", out=tmp_path / "run", overrides=[*FAST, "optim.steps=4"])
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "dino" and saved["optim"]["steps"] == 4
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in (
        "step",
        "epoch",
        "loss",
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "img_s",
        "data_wait",
        "teacher_entropy",
        "patch_std",
    ):
        assert key in record, key


def test_resume_with_different_config_is_refused(tmp_path):
    Trainer(_config("optim.steps=4"), tmp_path / "run").fit(stop_at=2)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        Trainer(_config("optim.steps=4", "optim.lr=0.5"), tmp_path / "run").fit()


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        Trainer(_config("optim.steps=2"), target)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = _config("optim.steps=10", "train.checkpoint_every=2")
    trainer = Trainer(cfg, tmp_path / "run")
    original = trainer.method.loss

    def poisoned(batch, info):
        out = original(batch, info)
        if info.step >= 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer.method, "loss", poisoned)
    with pytest.raises(RuntimeError, match=r"non-finite loss at step 5"):
        trainer.fit()
    _, step = _params(tmp_path / "run")
    assert step == 4
    model, _ = _params(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def _cli(out, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "densessl", "pretrain", "--method", "dino", "--preset", "tiny",
            "--out", str(out), *FAST, "optim.steps=12", "optim.warmup_epochs=0.5",
            "train.checkpoint_every=3", "train.log_every=1", *extra]  # fmt: skip


def test_sigkill_then_resume_matches_a_straight_run(tmp_path):
    """A process killed without warning resumes from its last periodic checkpoint exactly."""
    import signal
    import subprocess
    import time

    subprocess.run(_cli(tmp_path / "straight"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, step = _params(killed)
    assert step < 12, "the run finished before it could be killed; make it longer"
    subprocess.run(_cli(killed), check=True, capture_output=True)
    a, _ = _params(tmp_path / "straight")
    b, step_b = _params(killed)
    assert step_b == 12
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 13))


def test_resume_accepts_a_checkpoint_that_predates_a_config_key(tmp_path):
    """Options added after a run was saved take their defaults when it resumes."""
    from densessl.io.checkpoint import save_atomic

    cfg = _config("optim.steps=4")
    Trainer(cfg, tmp_path / "run").fit(stop_at=2)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    del state["config"]["views"]["nested"]  # as saved by a version without this option
    save_atomic(state, last)
    Trainer(cfg, tmp_path / "run").fit()
    assert _params(tmp_path / "run")[1] == 4
    with pytest.raises(ConfigError, match=r"views\.nested"):
        Trainer(_config("optim.steps=6", "views.nested=true"), tmp_path / "run").fit()


_FAILING_RUN = """
import sys
sys.path.insert(0, {tests!r})
from helpers import run_config
from densessl.train.trainer import Trainer
from train.test_trainer import FAST

trainer = Trainer(run_config("dino", *FAST, "data.num_workers=1", "optim.steps=8"), {out!r})
original = trainer.method.loss

def failing(batch, info):
    if info.step >= 2:
        raise RuntimeError(f"boom at step {{info.step}}")
    return original(batch, info)

trainer.method.loss = failing
trainer.fit()
"""


def test_error_with_loader_workers_ends_the_process(tmp_path):
    """An error inside the training loop with persistent DataLoader workers reaches the
    caller and the process exits: the workers are shut down, not left waiting forever."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1])
    script = _FAILING_RUN.format(tests=tests, out=str(tmp_path / "run"))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung after the error instead of exiting")
    assert proc.returncode == 1, proc.stderr
    assert "RuntimeError: boom at step 2" in proc.stderr
