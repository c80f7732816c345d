"""Values that would fail at the first forward pass, unknown names and bad command
arguments are named at validation (``densessl: error: ...``, exit 2, nothing written);
file names with control characters print escaped.

See also ``test_robust_typed_input.py`` (strings, YAML, NaN) and ``test_robust_config.py``.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from PIL import Image
from torch import nn

from densessl.cli import main
from densessl.config.presets import build_run_config
from densessl.data.folder import CorruptImageWarning, ImageFolderDataset
from densessl.errors import ConfigError
from densessl.evaluation.api import evaluate
from densessl.evaluation.preprocess import ResizedSegmentation
from densessl.io.decode import ImageDecodeError, display_path
from densessl.methods.base import get_method, list_methods
from helpers import robust_config as tiny_config

METHODS = list(list_methods())


def _tiny(method: str, *extra: str):
    return build_run_config(method, get_method(method).Params, "tiny", list(extra))


# -- crop sizes and normalisation -----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("override", "key"),
    [("views.global_size=60", "views.global_size=60"), ("views.local_size=20", "local_size=20")],
)
def test_crop_sizes_must_be_multiples_of_the_patch_size(method, override, key):
    """Every method feeds whole crops to the ViT (patch 8 in the tiny presets)."""
    with pytest.raises(ConfigError, match=rf"{key} is not a multiple of backbone\.patch_size=8"):
        _tiny(method, override)


@pytest.mark.parametrize("method", METHODS)
def test_unused_local_size_is_not_checked(method):
    cfg = _tiny(method, "views.num_local=0", "views.local_size=20")
    assert cfg.views.local_size == 20
    assert _tiny(method, "views.global_size=72").views.global_size == 72  # 9 x 8


@pytest.mark.parametrize("std", ["[0.2, 0, 0.2]", "[0.2, -0.1, 0.2]", "[0.2, nan, 0.2]"])
def test_normalisation_std_must_be_positive(std):
    with pytest.raises(ConfigError, match=r"views\.std"):
        tiny_config(f"views.std={std}")


def test_eval_normalisation_std_must_be_positive():
    with pytest.raises(ValueError, match="std must be three numbers > 0"):
        ResizedSegmentation([], 32, std=(0.2, 0.0, 0.2))


class _NeverCalled(nn.Module):
    patch_size = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("features were extracted before image_size was checked")


@pytest.mark.parametrize("protocol", ["cluster", "retrieval", "linear"])
def test_eval_image_size_must_fit_the_backbone_patch_size(protocol):
    with pytest.raises(ConfigError, match=r"image_size=50 is not a multiple .* patch size 16"):
        evaluate(
            protocol,
            backbone=_NeverCalled(),
            overrides=["image_size=50", "data.num_images=4"],
            verbose=False,
            progress=False,
        )


# -- unknown names and bad command arguments ------------------------------------------------


def _run(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("densessl: error: ") and "Traceback" not in err
    return err


def test_unknown_method_is_named_and_nothing_is_written(tmp_path, capsys):
    err = _run(capsys, "pretrain", "--method", "nope", "--out", str(tmp_path / "run"))
    assert "unknown method 'nope'" in err and "dino" in err
    err = _run(capsys, "demo", "--method", "nope", "--out", str(tmp_path / "demo"))
    assert "unknown method 'nope'" in err
    err = _run(capsys, "demo", "--precision", "fp16", "--out", str(tmp_path / "demo"))
    assert "--precision" in err and "fp16" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("nope")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--size", "10"], "--size: SceneConfig.size must be in [64, 512], got 10"),
        (["--size", "2000"], "--size: "),
        (["--num-images", "0"], "--num-images: num_images must be an integer >= 1, got 0"),
        (["--num-images", "-3"], "--num-images: "),
        (["--seed", "-1"], "--seed: seed must be an integer >= 0, got -1"),
        (["--class-set", "nope"], "--class-set: SceneConfig.class_set must be one of"),
    ],
)
def test_scenes_arguments_are_named(tmp_path, capsys, args, match):
    out = tmp_path / "scenes"
    err = _run(capsys, "scenes", "--out", str(out), "--num-images", "2", *args)
    assert match in err
    assert not out.exists()


def test_scenes_out_that_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    err = _run(capsys, "scenes", "--out", str(target), "--num-images", "2")
    assert "--out: " in err and "existing file" in err
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    err = _run(capsys, "scenes", "--out", str(folder), "--num-images", "2")
    assert "--out: " in err and "not a scenes folder" in err
    assert target.read_text() == "keep" and sorted(p.name for p in folder.iterdir()) == [
        "notes.txt"
    ]


BAD_SETTINGS = {
    "cluster": [
        "image_size=0",
        "mask_size=-1",
        "pca_dim=0",
        "num_clusters=0",
        "num_clusters=XC",
        "num_clusters=[]",
        "seeds=[]",
        "iters=0",
        "n_init=0",
        "init=nope",
        "max_points_per_centroid=0",
        "batch_size=0",
        "num_workers=-1",
        "backend=nope",
        "chunk_size=0",
        "many_to_one_criterion=nope",
    ],
    "retrieval": [
        "image_size=0",
        "memory_size=0",
        "num_neighbors=0",
        "temperature=0",
        "temperature=-1",
        "augment_epochs=0",
        "crop_scale=[0, 1]",
        "crop_scale=[2, 1]",
        "crop_ratio=[0, 1]",
        "brightness=-1",
        "hue=0.9",
        "jitter_p=2",
        "seed=-1",
        "batch_size=0",
        "num_workers=-1",
        "query_chunk=0",
        "memory_chunk=0",
        "search_backend=nope",
    ],
    "linear": ["image_size=0", "lr=0", "epochs=0", "head=nope", "fcn_dropout=1.5"],
    "unsupervised": ["image_size=0", "community=nope", "k_fg=0", "attention_mass=2"],
}


@pytest.mark.parametrize(
    ("protocol", "setting"), [(p, s) for p, items in BAD_SETTINGS.items() for s in items]
)
def test_bad_eval_settings_exit_2_naming_the_setting(capsys, protocol, setting):
    err = _run(capsys, "eval", protocol, "--backbone", "random:vit_tiny", setting)
    assert setting.split("=")[0] in err


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf"])
def test_viz_threshold_must_be_finite(tmp_path, capsys, threshold):
    out = tmp_path / "viz"
    argv = ["viz", "--backbone", "random:vit_tiny", "--images", str(tmp_path), "--out", str(out)]
    err = _run(capsys, *argv, f"--threshold={threshold}")
    assert "threshold a finite number" in err and not out.exists()


@pytest.mark.parametrize("command", [["eval", "cluster"], ["viz", "--images", "x", "--out", "y"]])
def test_patch_size_option_must_be_positive(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--backbone", "random:vit_tiny", "--patch-size", "-4"])
    assert exit_.value.code == 2
    assert "argument --patch-size: expected an integer >= 1, got '-4'" in capsys.readouterr().err


# -- file names with control characters -----------------------------------------------------

ODD = "new\nline\x1b[31m\tred"
ESCAPED = "new\\nline\\x1b[31m\\tred"


def _png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_file_names_print_escaped_in_warnings_and_errors(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / f"{ODD}.png").write_bytes(b"")  # empty: dropped by the header scan
    with pytest.warns(CorruptImageWarning) as rec:
        ImageFolderDataset(root)
    message = str(rec[0].message)
    assert f"{ESCAPED}.png" in message and "\n" not in message and "\x1b" not in message
    with pytest.raises(ImageDecodeError) as err:
        ImageFolderDataset(root, on_corrupt="raise")
    assert f"{ESCAPED}.png" in str(err.value) and "\n" not in str(err.value)
    assert display_path(f"a{ODD}\udcff") == f"a{ESCAPED}\\xff"


def test_decode_failure_warning_escapes_the_name(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(_png())
    data = _png(64)
    (root / f"b{ODD}.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    dataset = ImageFolderDataset(root)
    with pytest.warns(CorruptImageWarning) as rec:
        dataset[1]
    message = str(rec[0].message)
    assert f"b{ESCAPED}.png" in message and "\n" not in message


@pytest.mark.parametrize("dataset", ["voc", "scenes", "ade20k", "cocostuff", "cocothings"])
def test_dataset_layout_errors_print_escaped(tmp_path, dataset):
    from densessl.data.segmentation.registry import build_segmentation_dataset

    root = tmp_path / ODD
    root.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        build_segmentation_dataset(dataset, root=root, split="val")
    assert ESCAPED in str(err.value) and "\n" not in str(err.value)


def test_data_path_errors_print_escaped(tmp_path, capsys):
    err = _run(capsys, "pretrain", "--data", str(tmp_path / ODD), "--out", str(tmp_path / "r"))
    assert ESCAPED in err and err.count("\n") == 1


def test_unknown_user_in_a_path_is_a_missing_path():
    """``~nosuchuser/x``: ``Path.expanduser`` raises RuntimeError; it is reported missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from densessl.data.sources import build_pretrain_images

        cfg = tiny_config("data.path=~densessl-no-such-user/photos").data
        with pytest.raises(ConfigError, match=r"data\.path: ~densessl-no-such-user/photos does"):
            build_pretrain_images(cfg)


NO_USER = "~densessl-no-such-user/x"


EVAL_OUT = ["--backbone", "random:vit_tiny", "--no-progress", "data.num_images=20"]


@pytest.mark.parametrize(
    ("argv", "writes"),
    [
        (["pretrain", "--data", NO_USER], False),
        (["pretrain", "--init", NO_USER], False),
        (["eval", "cluster", "--backbone", NO_USER], False),
        (["eval", "cluster", *EVAL_OUT, "--out", f"{NO_USER}.json"], True),
        (
            ["eval", "cluster", "--backbone", "timm:vit_tiny_patch16_224", "--weights", NO_USER],
            False,
        ),
        (["viz", "--backbone", NO_USER, "--images", "."], False),
        (["viz", "--backbone", "random:vit_tiny", "--images", NO_USER], False),
        (["export", NO_USER], False),
        (["scenes", "--num-images", "1", "--out", f"{NO_USER}/scenes"], True),
    ],
)
def test_unknown_user_in_any_path_option_is_not_a_traceback(
    tmp_path, capsys, monkeypatch, argv, writes
):
    """``Path.expanduser`` raises RuntimeError for ``~nosuchuser``; here the path stays as
    typed (as in a shell): an input is reported missing, an output is written there."""
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("pretrain", "viz", "export"):
        argv = [*argv, "--out", str(tmp_path / "out")]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "home directory" not in err
    if writes:
        assert code == 0 and (tmp_path / NO_USER.split("/")[0]).is_dir(), err
    else:
        assert code == 2 and err.startswith("densessl: error: "), err
