"""The README's first command, end to end at a toy size."""

import json

from densessl.demo import run_demo


def test_demo_writes_run_eval_pictures_export_and_report(tmp_path, capsys):
    run = run_demo(tmp_path / "demo", steps=2, num_images=40)
    out = capsys.readouterr().out
    assert "demo finished" in out and "report:" in out
    rows = json.loads((run / "eval" / "demo_summary.json").read_text())
    assert {r["eval"] for r in rows} == {"linear", "cluster", "retrieval"}
    assert {r["backbone"] for r in rows} == {"leopart tiny", "random init"}
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    report = (run / "report.md").read_text()
    pictures = sorted((run / "pictures").rglob("*.png"))
    assert len(pictures) == 8  # 4 val scenes x (trained, random)
    for picture in pictures:
        assert picture.relative_to(run).as_posix() in report
    assert (run / "export" / "model.safetensors").is_file()
    assert json.loads((run / "export" / "meta.json").read_text())["method"] == "leopart"
    assert "assignment entropy" in report and run.name == "leopart-tiny"
