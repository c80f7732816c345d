"""benchmarks/demo_timing.py without running the demo: the capped environment, the parsing
of the demo's closing line, the table and the refusal of an existing folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_benchmark


def test_modes_parse_and_table(tmp_path: Path):
    module = load_benchmark("demo_timing")
    assert "ATEN_CPU_CAPABILITY" not in module.mode_env("fp32", {"PATH": "/bin"})
    capped = module.mode_env("fp32-avx2", {"PATH": "/bin"})
    assert capped["ATEN_CPU_CAPABILITY"] == "avx2" and capped["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert capped["MKL_ENABLE_INSTRUCTIONS"] == "AVX2" and capped["PATH"] == "/bin"
    line = "...\ndemo finished in 262 s on AMD EPYC, 2 threads (training precision fp32: fp32)\n"
    got = module.parse_finished(line)
    assert got == {
        "seconds": 262,
        "where": "AMD EPYC, 2 threads",
        "precision": "fp32",
        "used": "fp32",
    }
    with pytest.raises(ValueError, match="demo finished"):
        module.parse_finished("no such line")
    record = {"mode": "fp32-avx2", "cap": "AVX2", **got, "process_seconds": 270.5,
              "matmul_gflops": {"float32": 111.0, "bfloat16": 0.4}}  # fmt: skip
    text = module.table([record])
    assert "| fp32-avx2 | AVX2 | fp32 (fp32) | 262 | 270.5 | 111 / 0.4 |" in text
    assert text.endswith("On AMD EPYC, 2 threads.")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path / "taken")])
