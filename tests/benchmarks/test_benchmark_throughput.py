"""benchmarks/throughput.py in its smallest mode: one method, two steps, JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_benchmark

COLUMNS = {
    "name", "method", "backbone", "crops", "batch", "images_per_s", "ms_per_step", "data_wait",
    "peak_mib", "gflop_per_step", "mfu", "ratio_to_backbone",
}  # fmt: skip


def test_minimal_run_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture):
    module = load_benchmark("throughput")
    out = tmp_path / "t.json"
    module.main(
        ["--methods", "dino", "--steps", "2", "--warmup", "1", "--workers", "0",
         "--precision", "fp32", "--json", str(out),
         "--set", "backbone.depth=1", "data.batch_size=2", "dino.out_dim=64",
         "dino.hidden_dim=32", "dino.bottleneck_dim=16"]
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["dtype"] == "float32" and doc["peak_matmul_tflops"] > 0
    assert [r["name"] for r in doc["rows"]] == ["dino", "dino/backbone"]
    for row in doc["rows"]:
        assert set(row) == COLUMNS
        assert row["ms_per_step"] > 0 and row["gflop_per_step"] > 0 and row["mfu"] > 0
        assert 0 <= row["data_wait"] < 1 and row["peak_mib"] > 0
    assert doc["rows"][1]["ratio_to_backbone"] == 1.0
    table = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| run |"))
    assert table[header + 1].startswith("|---|")
    assert table[header + 2].startswith("| dino | ") and table[header + 3].startswith("| dino/b")
