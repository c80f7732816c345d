"""The quality benchmark's smoke mode: every row, the report files, and cached cells reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densessl.methods.base import list_methods
from helpers import BENCHMARKS

SCRIPT = BENCHMARKS / "quality.py"
DIAGNOSE = SCRIPT.with_name("quality_diagnose.py")


def run_script(script: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run(*args: str) -> str:
    return run_script(SCRIPT, *args)


@pytest.mark.slow
def test_quick_mode_writes_the_report_and_reuses_cells(tmp_path):
    out = tmp_path / "results"
    first = run("--quick", "--out", str(out))
    reference = ["onehot-pixel", "onehot-patch", "random", "supervised"]
    rows = [*reference, "supervised-image", "supervised-match", *sorted(list_methods())]
    for row in rows:
        assert f"cell {row} seed 0" in first
    assert "cached" not in first

    record = json.loads((out / "quality.json").read_text())
    assert {r["row"] for r in record["rows"]} == set(rows)
    assert len(record["cells"]) == len(rows)
    for cell in record["cells"]:
        assert cell["hardware"]["dtype"] in ("float32", "bfloat16")
        assert set(cell["results"]) >= {"linear"}
        if not cell["row"].startswith("onehot"):
            dense = {"linear", "cluster_C", "cluster_4C", "retrieval"}
            image_level = {"knn", "discovery", "video", "correspondence"}
            assert set(cell["results"]) == dense | image_level | {"finetune"}
            assert all(0.0 <= cell["results"][k] <= 100.0 for k in image_level)
        if cell["row"] not in ("random",) and not cell["row"].startswith("onehot"):
            assert cell["training"]["steps"] == 3
            assert cell["training"]["train_seconds"] > 0
    markdown = (out / "quality.md").read_text()
    assert "NOT quality results" in markdown and "python benchmarks/quality.py --quick" in markdown
    for column, ceiling in (("k-NN top-1", "supervised-image"), ("PCK@0.1", "supervised-match")):
        check = f"- {column}: ceiling row `{ceiling}` above random init by > 3σ: **pending**"
        assert check in markdown
    for column in ("CorLoc", "video J&F", "fine-tuned linear"):
        assert f"- {column}: ceiling row `supervised` above random init" in markdown
    assert markdown.count("\n| ") == len(rows) + 1  # header + one line per row
    assert (out / "quality_pca.png").stat().st_size > 1000

    (out / "findings.md").write_text("Hand-written analysis.\n")
    second = run("--quick", "--out", str(out))
    assert second.count("cached") == len(rows)  # nothing trained or evaluated again
    assert json.loads((out / "quality.json").read_text())["rows"] == record["rows"]
    assert "Hand-written analysis." in (out / "quality.md").read_text()

    # a cell of an older code version (same spec, less a config option added since) is
    # reported, marked stale, until recomputed
    current = next((out / "cache").glob("random-seed0-*"))
    older = current.with_name("random-seed0-000000000000")
    current.rename(older)
    spec_file = older / "spec.json"
    original_spec = spec_file.read_text()
    spec = json.loads(original_spec)
    del spec["backbone"]["attention"]
    spec_file.write_text(json.dumps(spec))
    run("--quick", "--out", str(out), "--report-only")
    markdown = (out / "quality.md").read_text()
    assert "| random init (floor) | 1/1 † |" in markdown
    assert "older version of the densessl code" in markdown
    cells = json.loads((out / "quality.json").read_text())["cells"]
    assert [c["row"] for c in cells if c.get("stale")] == ["random"]
    spec["backbone"]["arch"] = "vit_base"  # a different experiment is never shown
    spec_file.write_text(json.dumps(spec))
    run("--quick", "--out", str(out), "--report-only")
    assert "| random init (floor) | 0/1 |" in (out / "quality.md").read_text()
    spec_file.write_text(original_spec)
    older.rename(current)

    # --seeds picks cells to run; the report still covers the planned seeds (0) plus those
    run("--quick", "--out", str(out), "--report-only", "--seeds", "7")
    seeds_column = [
        line.split(" | ")[1]
        for line in (out / "quality.md").read_text().splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]
    assert seeds_column == ["1/1", "1/1"] + ["1/2"] * (len(rows) - 2)

    diagnosed = run_script(DIAGNOSE, "--quick", "--out", str(out))  # reads cells, trains nothing
    assert "skip" not in diagnosed
    records = json.loads((out / "diagnosis.json").read_text())
    assert {r["row"] for r in records} == set(rows) - {"onehot-pixel", "onehot-patch"}
    for r in records:
        assert 0.0 <= r["position_eta2"] <= 1.0 and 0.0 <= r["class_eta2"] <= 1.0
        cell = next(c for c in record["cells"] if c["row"] == r["row"])
        assert r["cluster_C"] == pytest.approx(cell["results"]["cluster_C"])  # same protocol
        assert r["linear"] == cell["results"]["linear"]  # copied from the cell
        assert 0.0 <= r["centred_C"] <= 100.0 and 0.0 <= r["centred_linear"] <= 100.0
        kinds = [v for n, v in r["per_class_C"].items() if not n.startswith("stuff/")]
        assert r["things_C"] == pytest.approx(sum(kinds) / len(kinds))
        cls = r["row"] not in ("selfpatch", "flsl", "loca")  # the CLS-free backbones
        assert ("fg_precision" in r) == cls
        if cls:
            assert 0.0 < r["thing_share"] < 100.0 and 0.0 <= r["fg_recall"] <= 100.0
    markdown = (out / "diagnosis.md").read_text()
    assert markdown.count("\n| ") == 3 * (len(rows) - 2 + 1)
    (out / "diagnosis.md").unlink()
    run_script(DIAGNOSE, "--quick", "--out", str(out), "--report-only")
    assert (out / "diagnosis.md").read_text() == markdown
    # diagnosing one row again keeps the others' records (their weights may be elsewhere)
    run_script(DIAGNOSE, "--quick", "--out", str(out), "--rows", "dino")
    again = json.loads((out / "diagnosis.json").read_text())
    assert sorted((r["row"], r["seed"]) for r in again) == sorted(
        (r["row"], r["seed"]) for r in records
    )
    assert (out / "diagnosis.md").read_text().count("\n| ") == markdown.count("\n| ")


def test_unknown_rows_are_refused(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--rows", "nope"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "unknown rows ['nope']" in done.stderr


def test_code_version_follows_imports(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import quality

    root = tmp_path / "densessl"
    (root / "methods").mkdir(parents=True)
    (root / "shared.py").write_text("from densessl.dino_loss import x\n")
    (root / "dino_loss.py").write_text("import densessl.helper\n")
    (root / "helper.py").write_text("")
    (root / "leopart_loss.py").write_text("")
    (root / "methods" / "leopart.py").write_text("from densessl import leopart_loss\n")
    found = quality._imported_files(root, {root / "shared.py"})
    assert {p.name for p in found} == {"shared.py", "dino_loss.py", "helper.py"}
    found = quality._imported_files(root, {root / "methods" / "leopart.py"})
    assert {p.name for p in found} == {"leopart.py", "leopart_loss.py"}
    assert quality.code_version("dino") != quality.code_version("leopart")


def test_a_shipped_base_brings_its_scenes_to_every_column(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import quality
    import quality_cells
    import quality_columns

    gray = quality.like_shipped(quality.QUICK, "miniature-base")
    assert (gray.scenes_colours, gray.scenes_objects, gray.scenes_radius) == (
        "gray",
        (1, 3),
        (0.2, 0.4),
    )
    overrides = gray.shared_overrides(0)
    assert "data.scenes_colours=gray" in overrides and "data.scenes_objects=[1,3]" in overrides
    config = quality_cells.eval_datasets(gray)["val"].config
    assert (config.colours, config.min_objects, config.max_radius) == ("gray", 1, 0.4)
    options = quality_columns._dataset_options
    assert options("boxes", {}, gray)["radius"] == [0.2, 0.4]
    assert options("video", {}, gray)["colours"] == "gray"
    assert options("keypoint_pairs", {}, gray)["class_set"] == "distinct-cues"
    assert quality_cells._eval_spec(gray) != quality_cells._eval_spec(quality.QUICK)
    with pytest.raises(SystemExit, match="unknown shipped base"):
        quality.like_shipped(quality.QUICK, "nope")


def _diagnose(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import quality_diagnose

    return quality_diagnose


def test_eta_squared_on_hand_built_features(monkeypatch):
    eta_squared = _diagnose(monkeypatch).eta_squared
    import torch

    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0], [9.0, 9.0]])
    groups = torch.tensor([0, 0, 1, 1, -1])  # the last row has no group and is left out
    # dim 0 is the group exactly (η² 1), dim 1 has equal group means (η² 0)
    assert eta_squared(x, groups) == pytest.approx(0.5)
    assert eta_squared(x[:4, :1], torch.tensor([0, 1, 2, 3])) == pytest.approx(1.0)
    assert eta_squared(x[:4, :1], torch.tensor([0, 0, 0, 0])) == pytest.approx(0.0)


def test_patch_classes_take_the_majority_label(monkeypatch):
    patch_classes = _diagnose(monkeypatch).patch_classes
    import torch

    labels = torch.tensor([[1, 1, 2, 2], [1, 1, 0, 2], [255, 255, 0, 255], [255, 255, 0, 255]])[
        None
    ]
    got = patch_classes(labels, (2, 2), num_classes=3)
    assert got.tolist() == [[[1, 2], [-1, 0]]]


def test_each_image_level_column_is_checked_against_its_ceiling_row(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from quality_report import CEILING_OF, check_targets

    # (mean, std, seeds) per column: the match row beats random on PCK by 10 > 3 * 2.8
    by_row = {
        "random": {"correspondence": (3.0, 2.0, 3), "knn": (19.0, 1.0, 3)},
        "supervised-match": {"correspondence": (13.0, 2.0, 3)},
        "supervised-image": {"knn": (21.0, 1.0, 3)},
        "supervised": {"knn": (30.0, 1.0, 2)},
    }
    lines = check_targets(by_row)
    assert "- PCK@0.1: ceiling row `supervised-match` above random init by > 3σ: **met**" in (
        "\n".join(lines)
    )
    knn = next(line for line in lines if line.startswith("- k-NN top-1"))
    assert "`supervised-image`" in knn and "**NOT met** (gap +2.0, 3σ = 4.2)" in knn
    video = next(line for line in lines if line.startswith("- video J&F"))
    assert "`supervised`" in video and "**pending**" in video
    assert set(CEILING_OF) == {"knn", "discovery", "video", "correspondence", "finetune"}


def test_the_protocol_names_every_machine_setting_the_cells_ran_on(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from quality_report import hardware_summary, hardware_text

    def cell(cpu: str, dtype: str) -> dict:
        return {
            "hardware": {
                "cpu": cpu,
                "torch_threads": 1,
                "device": "cpu",
                "dtype": dtype,
                "torch": "2.14.1",
            }
        }

    cells = {
        ("dino", 0): cell("Intel Xeon", "bfloat16"),
        ("dino", 1): cell("Intel Xeon", "bfloat16"),
        ("leopart", 0): cell("Intel Xeon", "bfloat16"),
        ("neco", 1): cell("AMD EPYC", "float32"),
    }
    summary = hardware_summary(cells)
    assert [(s["cpu"], s["dtype"], len(s["cells"])) for s in summary] == [
        ("Intel Xeon", "bfloat16", 3),
        ("AMD EPYC", "float32", 1),
    ]
    text = hardware_text(summary)
    assert "Intel Xeon, 1 threads, cpu, autocast bfloat16, torch 2.14.1: 3 cells" in text
    assert "AMD EPYC, 1 threads, cpu, autocast float32, torch 2.14.1: 1 cell (neco/1)" in text
    assert hardware_text(hardware_summary({})) == "no cells yet"


def test_an_interrupted_cell_ends_the_run_with_the_signal_exit_status(
    tmp_path, monkeypatch, capsys
):
    """SIGTERM reaches a cell's training as TrainingInterrupted (a checkpoint was written);
    the benchmark stops with 143 and the message, instead of a traceback."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import signal

    import quality
    from densessl.train.signals import TrainingInterrupted

    def interrupted(row, seed, *args):
        raise TrainingInterrupted(signal.SIGTERM, 7, tmp_path / "last.pt")

    monkeypatch.setattr(quality, "run_cell", interrupted)
    code = quality.main(["--quick", "--out", str(tmp_path / "out"), "--rows", "dino"])
    assert code == 143
    err = capsys.readouterr().err
    assert "cell dino seed 0 interrupted by SIGTERM at step 7" in err and "resume" in err
    assert not (tmp_path / "out" / "quality.md").exists()  # nothing else ran


def test_the_report_names_the_command_that_rewrites_it(tmp_path, monkeypatch):
    """The report's command carries the flags that chose its budget: ``--scenes-like NAME``
    and ``--from-base WEIGHTS`` tables are rewritten by their own commands, not the default."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import quality

    for flags in (["--scenes-like", "miniature-base"], ["--from-base", "densessl:miniature-base"]):
        out = tmp_path / flags[0].strip("-")
        assert quality.main(["--quick", *flags, "--out", str(out), "--report-only"]) == 0
        command = "python benchmarks/quality.py --quick " + " ".join(flags)
        assert f"Command: `{command}`" in (out / "quality.md").read_text()
