"""benchmarks/attention_kernels.py in its smallest mode: one case, one dtype, JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_benchmark


def test_one_case_writes_a_row_per_dtype(tmp_path: Path, capsys: pytest.CaptureFixture):
    module = load_benchmark("attention_kernels")
    out = tmp_path / "a.json"
    module.main(["--cases", "tiny preset 32x64", "--dtypes", "fp32", "bf16", "--reps", "1",
                 "--threads", "1", "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["dtype"]) for r in rows] == [
        ("tiny preset 32x64", "fp32"),
        ("tiny preset 32x64", "bf16"),
    ]
    assert all(r["fused_s"] > 0 and r["explicit_s"] > 0 for r in rows)
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| case |") and len(table) == 4
