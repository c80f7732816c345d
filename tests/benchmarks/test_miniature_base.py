"""The miniature base's curve script in smoke mode: trains, evaluates kept checkpoints, resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import BENCHMARKS

SCRIPT = BENCHMARKS / "miniature_base.py"


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_quick_curve_is_written_cached_and_recorded(tmp_path):
    out = tmp_path / "out"
    run("--quick", "--out", str(out))
    (folder,) = (out / "cache").glob("quick-seed0-*")
    steps = sorted(p.name for p in (folder / "eval").glob("step_*.json"))
    assert steps == ["step_0000000.json", "step_0000002.json", "step_0000004.json"]
    curve = json.loads((out / "base_curve.json").read_text())[folder.name]["curve"]
    assert [row["step"] for row in curve] == [0, 2, 4]
    for row in curve:
        assert 0 <= row["class_eta2"] <= 1 and 0 <= row["linear"] <= 100
    assert "| 4 |" in (out / "base_curve.md").read_text()
    segments = json.loads((folder / "provenance.json").read_text())
    assert [s["from_step"] for s in segments] == [0] and len(segments[0]["code_version"]) == 16
    before = {p: p.stat().st_mtime_ns for p in (folder / "eval").iterdir()}
    run("--quick", "--out", str(out))  # finished: nothing retrained or re-evaluated
    assert {p: p.stat().st_mtime_ns for p in (folder / "eval").iterdir()} == before
    assert len(json.loads((folder / "provenance.json").read_text())) == 1
    exported = tmp_path / "export"
    printed = run("--quick", "--out", str(out), "--export", str(exported))
    meta = json.loads((exported / "meta.json").read_text())
    assert meta["reproduce"].endswith("--recipe quick --seed 0 --export")
    assert [row["step"] for row in meta["curve"]] == [0, 2, 4] and meta["step"] == 4
    from densessl.evaluation.features import build_extractor
    from densessl.models.shipped import sha256_of

    assert sha256_of(exported / "model.safetensors") in printed
    assert len(build_extractor(exported).model.model.blocks) == 1
