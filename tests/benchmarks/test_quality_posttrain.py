"""The quality benchmark's post-training table (``--from-base``) in smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import densessl
from densessl.io.checkpoint import training_backbone_weights
from helpers import BENCHMARKS

SCRIPT = BENCHMARKS / "quality.py"


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_post_training_rows_start_from_the_base_and_the_base_row_scores_it(tmp_path):
    # a base with the quick budget's backbone (vit_tiny 128-d, 1 block, patch 8)
    base = densessl.pretrain(
        method="dino",
        out=tmp_path / "base",
        preset="tiny",
        steps=2,
        overrides=["backbone.depth=1", "data.scenes_num_images=20", "data.batch_size=4",
                   "data.num_workers=0", "train.progress=false"],
    )  # fmt: skip
    out = tmp_path / "posttrain"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--from-base", str(base), "--out", str(out)]
    done = subprocess.run(
        [*command, "--rows", "base", "dino"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cell base seed 0" in done.stdout and "cell dino seed 0" in done.stdout
    (cell,) = (out / "cache").glob("dino-seed0-*")
    spec = json.loads((cell / "spec.json").read_text())
    assert spec["init"]["file"] == "last.pt" and len(spec["init"]["sha256"]) == 64
    # the continued DINO's teacher is the base after 3 EMA steps: close to it
    start = training_backbone_weights(
        torch.load(base / "checkpoints" / "last.pt", weights_only=True), "teacher"
    )
    state = torch.load(cell / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert _max_gap(training_backbone_weights(state, "teacher"), start) < 1e-2
    record = json.loads((out / "cache").glob("base-seed0-*").__next__().joinpath("cell.json")
                        .read_text())  # fmt: skip
    assert record["training"] == {} and 0 <= record["results"]["linear"] <= 100
    report = (out / "quality.md").read_text()
    assert "Post-training table" in report and "the base, not post-trained" in report
    assert "base above DINO" not in report
