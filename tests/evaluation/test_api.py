"""``densessl.evaluate(...)`` and ``densessl eval`` end to end on scenes, settings overrides,
split choices for the real datasets and the printed table."""

from __future__ import annotations

import json
import sys

import pytest

import densessl
from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation import api
from densessl.evaluation.api import evaluate, resolve_protocol

SCENES = {"num_images": 40}  # 32 train / 8 val scenes at 96 px
#: Small but real settings per protocol: each run is a few seconds on 2 CPU cores.
FAST = {
    "linear": {"epochs": 4, "cache_views": 1},
    "cluster": {"seeds": [0, 1], "n_init": 1, "iters": 20},
    "retrieval": {"num_neighbors": 5, "augment_epochs": 1},
}
#: A value of the (overridden) settings that the printed protocol column must show.
SHOWN = {
    "linear": ["4 ep", "lr 0.5", "1 cached views/img", "scored at 96 px"],
    "cluster": ["PCA-50", "seeds 0,1", "20 it x1 restarts", "scored at 96 px"],
    "retrieval": ["k=5", "T=0.02", "1 aug passes", "std (0.229, 0.224, 0.225)"],
}


@pytest.mark.parametrize("protocol", ["linear", "cluster", "retrieval"])
def test_trained_and_random_backbones_on_scenes(protocol, tiny_run, tmp_path, capsys):
    records = {}
    for name, backbone in (("trained", tiny_run), ("random", f"random:{tiny_run}")):
        out = tmp_path / f"{name}.json"
        records[name] = densessl.evaluate(
            protocol, backbone=backbone, data=SCENES, out=out, init_seed=1, progress=False,
            **FAST[protocol],
        )  # fmt: skip
        assert json.loads(out.read_text()) == {
            k: v for k, v in records[name].items() if k != "json"
        }
    printed = capsys.readouterr().out
    for name, record in records.items():
        assert record["protocol"] == protocol
        assert set(record) >= {"settings", "backbone", "dataset", "results", "summary", "seconds"}
        assert record["backbone"]["kind"] == ("run" if name == "trained" else "random")
        data = record["dataset"]
        assert (data["name"], data["num_val"], data["num_classes"]) == ("scenes", 8, 11)
        assert data["train_split"] == (None if protocol == "cluster" else "train")
        assert data["num_train"] == (None if protocol == "cluster" else 32)
        for key, value in FAST[protocol].items():
            assert record["settings"][key] == value
        assert record["settings"]["image_size"] == 96  # the scenes' resolution
        for row in record["summary"]:
            assert 0.0 <= row["miou"] <= 1.0 and row["protocol"]
            assert f"{100 * row['miou']:.1f}" in printed
    assert records["trained"]["summary"] != [] and printed.count("densessl eval") == 2
    assert all(text in printed for text in SHOWN[protocol]), printed
    if protocol == "cluster":
        assert [r["result"] for r in records["trained"]["summary"]] == ["K=11", "K=44"]
        assert [r["matching"] for r in records["trained"]["summary"]] == [
            "hungarian",
            "many_to_one",
        ]
        assert len(records["trained"]["results"]["results"]["K=11"]["per_seed"]) == 2
    if protocol == "retrieval":
        results = records["trained"]["results"]
        assert results["miou"] == results["miou_no_matching"]  # reported without matching


def test_cli_eval_writes_json_into_the_run_and_prints_the_table(tiny_run, tmp_path, capsys):
    argv = ["eval", "cluster", "--backbone", str(tiny_run), "--no-progress"]
    assert main([*argv, "seeds=[3]", "n_init=1", "iters=10", "data.num_images=20"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tiny_run / "eval" / "cluster_scenes.json").read_text())
    assert record["settings"]["seeds"] == [3] and record["dataset"]["num_val"] == 4
    assert "seeds 3" in printed and "10 it x1 restarts" in printed and "K=11" in printed
    out = tmp_path / "sub" / "linear.json"
    linear = [*argv[:1], "linear", *argv[2:], "--out", str(out), "epochs=2", "data.num_images=20"]
    assert main(linear) == 0
    assert json.loads(out.read_text())["settings"]["epochs"] == 2
    distinct = [*argv, "seeds=[3]", "n_init=1", "iters=5", "data.num_images=20"]
    assert main([*distinct, "data.class_set=distinct-cues", "--out", str(out)]) == 0
    assert "K=9" in capsys.readouterr().out  # 3 stuff + 6 distinct-cue thing classes
    world = ["data.colours=gray", "data.objects=[1,3]", "data.radius=[0.2,0.4]"]
    assert main([*distinct, *world, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["dataset"]["options"]["colours"] == "gray"
    capsys.readouterr()
    assert main([*distinct, "data.colours=sepia", "--out", str(tmp_path / "no.json")]) == 2
    assert "colours" in capsys.readouterr().err and not (tmp_path / "no.json").exists()


def test_cli_errors_exit_2_with_the_reason(tiny_run, tmp_path, capsys):
    base = ["eval", "cluster", "--backbone", str(tiny_run)]
    assert main([*base, "seedz=[0]"]) == 2
    err = capsys.readouterr().err
    assert "unknown cluster setting 'seedz'" in err and "seeds" in err and "data.num_images" in err
    assert main(["eval", "linear", "--backbone", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*base, "--dataset", "voc"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert main([*base, "--dataset", "voc", "--root", str(tmp_path)]) == 2
    assert "no Pascal VOC data under" in capsys.readouterr().err


def test_cluster_json_records_scored_images_and_differences_and_missing_faiss_exits_2(
    tiny_run, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "cluster.json"
    argv = ["eval", "cluster", "--backbone", str(tiny_run), "--no-progress", "--out", str(out)]
    fast = ["seeds=[0]", "n_init=1", "iters=5", "data.num_images=20"]
    assert main([*argv, *fast, "drop_last=true", "batch_size=3"]) == 0
    results = json.loads(out.read_text())["results"]
    assert (results["num_images_total"], results["num_images"]) == (4, 3)
    assert results["num_images_dropped"] == 1 and results["backend"] == "torch"
    differences = results["differences_from_official"]
    assert differences and all(isinstance(d, str) for d in differences)
    assert any("backend=torch approximates" in d for d in differences)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert main([*argv, *fast, "backend=faiss"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densessl: error:") and "pip install 'densessl[faiss]'" in err
    assert "backend=torch" in err


def test_cli_help_lists_every_registered_protocol_and_its_settings(capsys):
    import dataclasses

    from densessl.evaluation.registry import list_protocols

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    listing = capsys.readouterr().out
    for name, record in list_protocols().items():
        assert f"  {name} " in listing and record.description[:40] in " ".join(listing.split())
        with pytest.raises(SystemExit):
            main(["eval", name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        fields = [f.name for f in dataclasses.fields(record.settings)]
        assert record.setting_names() == fields and fields
        assert all(f in text for f in fields), name
        assert record.source in text


def test_protocol_aliases_and_records():
    from densessl.evaluation.registry import get_protocol, list_protocols

    assert get_protocol("overclustering") is get_protocol("cluster")
    assert get_protocol("hummingbird").name == "retrieval"
    for record in list_protocols().values():
        assert record.datasets and "scenes" in record.datasets
        assert record.val_split and record.source and record.help
        assert hasattr(record.settings, "for_scenes")


def test_overrides_are_coerced_and_checked():
    settings, data = api._split_overrides(
        "cluster", "scenes", None, {"seeds": 0, "num_clusters": ["C", 3], "data": {"size": 64}}
    )
    assert settings == {"seeds": (0,), "num_clusters": ("C", 3)} and data == {"size": 64}
    settings, _ = api._split_overrides("retrieval", "voc", "x", {"memory_size": None})
    assert settings == {"memory_size": None}
    with pytest.raises(ConfigError, match=r"linear\.epochs.*integer"):
        api._split_overrides("linear", "scenes", None, {"epochs": "many"})
    with pytest.raises(ConfigError, match=r"unknown linear setting 'data.sizes'.*data\.size"):
        api._split_overrides("linear", "scenes", None, {"data.sizes": 3})
    with pytest.raises(ConfigError, match=r"invalid linear settings.*lr"):
        resolve_protocol("linear", "scenes", {"lr": -1.0})
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        evaluate("nope", backbone="random")
    with pytest.raises(ConfigError, match="unknown dataset 'cityscapes'"):
        evaluate("linear", backbone="random", dataset="cityscapes")


def test_real_datasets_get_paper_presets_and_protocol_splits(monkeypatch):
    calls = []

    class Fake:
        num_classes, class_names = 2, ["a", "b"]

        def __len__(self) -> int:
            return 3

    def fake_build(key, root, split, options):
        calls.append((split, dict(options)))
        return Fake()

    import dataclasses

    from densessl.evaluation import registry

    monkeypatch.setattr(api, "_build_dataset", fake_build)
    for name in ("linear", "retrieval"):
        record = dataclasses.replace(
            registry.get_protocol(name), run=lambda *a, **k: {"miou": 0.5, "per_class_iou": []}
        )
        monkeypatch.setitem(registry._PROTOCOLS, name, record)
    monkeypatch.setattr(api, "summarize", lambda *a: [])
    features = lambda images: images[:, :1, ::8, ::8].permute(0, 2, 3, 1)  # noqa: E731
    record = evaluate("linear", features, "cocostuff", root="x", verbose=False, device="cpu")
    assert record["backbone"]["kind"] == "callable"
    assert calls == [("val", {}), ("train", {"fraction": 0.1})]  # Leopart: 10% of train2017
    settings = record["settings"]
    assert (settings["image_size"], settings["eval_mask_size"]) == (448, 448)
    # Leopart: 2 processes x 60 = a global batch of 120 at lr 0.01 (every ViT-S VOC/COCO config)
    assert (settings["epochs"], settings["lr"], settings["batch_size"]) == (25, 0.01, 120)
    calls.clear()
    evaluate("linear", features, "voc", root="x", verbose=False, train_split="train")
    assert [c[0] for c in calls] == ["val", "train"]
    calls.clear()
    evaluate("retrieval", features, "voc", root="x", verbose=False)
    assert [c[0] for c in calls] == ["val", "trainaug"]
    assert resolve_protocol("retrieval", "voc", {}).image_size == 512
    assert resolve_protocol("cluster", "ade20k", {}).num_clusters == ("C", 300, 500)
    assert resolve_protocol("cluster", "scenes", {}, image_size=64).mask_size == 64


def test_scenes_folder_root_sets_the_resolution(tmp_path):
    from densessl.data.scenes.dataset import write_scenes
    from densessl.models.vit import BackboneConfig, build_backbone

    root = write_scenes(tmp_path / "scenes", 10, 64, 0, progress=False)
    spec = BackboneConfig(arch="vit_tiny", embed_dim=32, depth=1, num_heads=2, patch_size=8)
    backbone = build_backbone(spec)  # a bare ViTBackbone works too
    record = densessl.evaluate(
        "cluster", backbone=backbone, root=root, verbose=False, progress=False,
        seeds=[0], n_init=1, iters=5, num_clusters=["C"],
    )  # fmt: skip
    assert record["settings"]["image_size"] == 64 and record["dataset"]["num_val"] == 2
    assert record["backbone"]["kind"] == "module" and 0 <= record["summary"][0]["miou"] <= 1
