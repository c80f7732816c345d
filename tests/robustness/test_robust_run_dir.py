"""``pretrain --out``: a folder densessl did not make is never overwritten or emptied, a
refused resume writes nothing, and one run directory has one running ``pretrain``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.io.checkpoint import load_training_state
from densessl.train.run_dir import MARKER, RunDirectory
from densessl.train.trainer import Trainer
from helpers import ROBUST_RUN as TINY
from helpers import robust_config as tiny_config

SRC = Path(__file__).resolve().parents[2] / "src"


def _pretrain(out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--preset", "tiny", "--out", str(out), *extra, *TINY, "optim.steps=2"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir()
    (path / "config.yaml").write_text("my_project: {lr: 3}\n")
    (path / "metrics.jsonl").write_text('{"accuracy": 0.93}\n')
    (path / "notes.txt").write_text("do not lose me\n")
    return _snapshot(path)


def test_out_folder_that_is_not_a_run_is_refused_and_left_untouched(tmp_path, capsys):
    folder = tmp_path / "project"
    before = _user_folder(folder)
    assert main(_pretrain(folder)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"densessl: error: --out {folder} is not empty and is not a densessl")
    assert "config.yaml, metrics.jsonl, notes.txt" in err and "--allow-nonempty" in err
    assert "Traceback" not in err
    assert _snapshot(folder) == before and sorted(os.listdir(folder)) == sorted(before)


def test_allow_nonempty_starts_beside_files_but_never_overwrites_them(tmp_path, capsys):
    folder = tmp_path / "project"
    before = _user_folder(folder)
    assert main(_pretrain(folder, "--allow-nonempty")) == 2  # config.yaml would be replaced
    err = capsys.readouterr().err
    assert "holds config.yaml, metrics.jsonl, which the run would overwrite" in err
    assert _snapshot(folder) == before
    (folder / "config.yaml").unlink()
    (folder / "metrics.jsonl").unlink()
    assert main(_pretrain(folder, "--allow-nonempty")) == 0
    assert (folder / "notes.txt").read_text() == "do not lose me\n"
    assert load_training_state(folder / "checkpoints" / "last.pt")["step"] == 2
    assert main(_pretrain(folder)) == 0  # now a densessl run: it resumes (done already)


def test_refused_resume_writes_nothing(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config("optim.steps=4"), out).fit(stop_at=2)
    before = _snapshot(out)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        Trainer(tiny_config("optim.steps=4", "optim.lr=0.5"), out).fit()
    assert _snapshot(out) == before  # config.yaml and metrics.jsonl as they were
    Trainer(tiny_config("optim.steps=4"), out).fit()  # the lock was released
    assert load_training_state(out / "checkpoints" / "last.pt")["step"] == 4


def test_out_inside_the_data_folder_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    for out in (images, images / "runs" / "a"):
        with pytest.raises(ConfigError, match=r"inside data\.path"):
            Trainer(tiny_config(f"data.path={images}", "optim.steps=2"), out).fit()
    assert sorted(os.listdir(images)) == [f"{i}.png" for i in range(6)]


def test_stale_temp_cleanup_spares_files_densessl_did_not_name(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config("optim.steps=2"), out).fit()
    ckpts = out / "checkpoints"
    ours = [ckpts / ".last.pt.k3x_9a0q.tmp", ckpts / ".step_0000002.pt.abcdefgh.tmp"]
    ours.append(out / ".config.yaml.4242.tmp")
    users = [ckpts / ".notes.tmp", ckpts / ".last.pt.mine.tmp", out / ".backup.tmp"]
    for path in ours + users:
        path.write_text("x")
    Trainer(tiny_config("optim.steps=2"), out).fit()
    assert [p.exists() for p in ours] == [False] * 3
    assert [p.exists() for p in users] == [True] * 3


def test_a_run_without_the_marker_is_recognised_by_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config("optim.steps=4"), out).fit(stop_at=2)
    (out / MARKER).unlink()  # as written by a densessl before the marker existed
    (out / ".densessl.lock").unlink()
    Trainer(tiny_config("optim.steps=4"), out).fit()
    assert load_training_state(out / "checkpoints" / "last.pt")["step"] == 4
    assert json.loads((out / MARKER).read_text())["format"] == "densessl-run"


_HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from densessl.train.run_lock import RunLock
root = Path({root!r})
root.mkdir()
RunLock(root).acquire()
(root / ".densessl-run.json").write_text('{{"format": "densessl-run"}}')
(root / "checkpoints").mkdir()
(root / "checkpoints" / ".last.pt.inflight.tmp").write_text("being written")
print("locked", flush=True)
time.sleep(600)
"""


def test_second_pretrain_is_refused_while_the_first_holds_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = textwrap.dedent(_HOLDER.format(src=str(SRC), root=str(out)))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        temp = out / "checkpoints" / ".last.pt.inflight.tmp"
        assert main(_pretrain(out)) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use by another densessl pretrain (pid {holder.pid} on" in err
        assert "Traceback" not in err
        assert temp.read_text() == "being written"  # the holder's in-flight file survives
        assert not (out / "checkpoints" / "last.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing anything: its lock is gone with it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and main(_pretrain(out)) != 0:
        time.sleep(0.2)
    assert load_training_state(out / "checkpoints" / "last.pt")["step"] == 2


def test_lock_is_held_while_training_and_released_after(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config("optim.steps=2"), out)
    seen = []
    real_loop = trainer._loop

    def loop() -> None:
        with pytest.raises(ConfigError, match=r"in use by another densessl pretrain \(pid"):
            RunDirectory(out).claim()
        seen.append(True)
        real_loop()

    monkeypatch.setattr(trainer, "_loop", loop)
    trainer.fit()
    assert seen == [True]
    other = RunDirectory(out)
    other.claim()  # free again
    other.close()


def _refused_worker(rank: int, init_file: str, out: str, report: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        Trainer(tiny_config("optim.steps=2", "train.device=cpu"), Path(out)).fit()
        message = "trained"
    except ConfigError as err:
        message = str(err)
    finally:
        dist.destroy_process_group()
    Path(f"{report}.{rank}").write_text(message)


@pytest.mark.slow
def test_every_rank_of_a_job_stops_when_rank_0_finds_the_run_locked(tmp_path):
    """Rank 0 takes the lock for the job; when it cannot, no rank trains and none hangs."""
    import torch.multiprocessing as mp

    out = tmp_path / "run"
    out.mkdir()
    from densessl.train.run_lock import RunLock

    lock = RunLock(out)
    lock.acquire()  # another pretrain holds the run
    report = tmp_path / "report"
    context = mp.spawn(
        _refused_worker, args=(str(tmp_path / "init"), str(out), str(report)), nprocs=2, join=False
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hang when rank 0 is refused")
    lock.release()
    assert (
        f"in use by another densessl pretrain (pid {os.getpid()}"
        in report.with_suffix(".0").read_text()
    )
    assert "another process of this job could not start" in report.with_suffix(".1").read_text()
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
