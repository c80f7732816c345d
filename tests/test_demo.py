"""The README's first command, end to end at a toy size."""

import json

import pytest

from densessl.demo import run_demo
from densessl.errors import ConfigError


def test_demo_post_trains_the_shipped_base_and_reports_the_gain(tmp_path, capsys):
    run = run_demo(tmp_path / "demo", steps=2, num_images=40)
    out = capsys.readouterr().out
    assert "demo finished" in out and "report:" in out and "gain over the base" in out
    assert "from densessl:miniature-base" in out
    meta = json.loads((tmp_path / "demo" / "scenes" / "classes.json").read_text())
    assert meta["config"]["colours"] == "gray" and meta["class_set"] == "distinct-cues"
    rows = json.loads((run / "eval" / "demo_summary.json").read_text())
    assert {r["eval"] for r in rows} == {"linear", "cluster", "retrieval"}
    assert {r["backbone"] for r in rows} == {"leopart post-trained", "base", "random init"}
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    report = (run / "report.md").read_text()
    pictures = sorted((run / "pictures").rglob("*.png"))
    assert len(pictures) == 16  # 4 val scenes x (trained, base, random, side by side)
    for picture in pictures:
        assert picture.relative_to(run).as_posix() in report
    assert "Gain over the base it started from (mIoU points): linear" in report
    assert (run / "export" / "model.safetensors").is_file()
    assert json.loads((run / "export" / "meta.json").read_text())["method"] == "leopart"
    assert "assignment entropy" in report and run.name == "leopart-from-base"
    assert "Demo finished in" in report and "training precision auto" in report


def test_demo_from_scratch_in_fp32_and_bad_options(tmp_path, capsys):
    run = run_demo(
        tmp_path / "demo", steps=1, num_images=40, method="dino", init=None, precision="fp32"
    )
    out = capsys.readouterr().out
    assert run.name == "dino-tiny" and "gain over the random init" in out
    assert "training precision fp32: fp32" in out
    assert "precision: fp32" in (run / "config.yaml").read_text()
    rows = json.loads((run / "eval" / "demo_summary.json").read_text())
    assert {r["backbone"] for r in rows} == {"dino tiny", "random init"}
    with pytest.raises(ConfigError, match="densessl:miniature-base"):
        run_demo(tmp_path / "other", init="densessl:nope")
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        run_demo(tmp_path / "other", precision="fp16")
    assert not (tmp_path / "other").exists()
