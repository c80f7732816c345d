"""Config and CLI: impossible values, missing paths and bad outputs stop before any training
step, with an error naming the key (or path) and the fix; the CLI exits with code 2.

Already covered elsewhere: ``tests/config/test_config.py::test_bad_overrides_name_the_key``
(unknown keys, wrong types, local crop larger than global), ``tests/data/test_views.py``
(``test_views_config_validation``; ``test_tiny_image_upsamples_into_crops``: a crop larger
than the image is upsampled, as torchvision's RandomResizedCrop does — not an error),
``tests/train/test_trainer.py::test_out_that_is_a_file_is_refused``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation.overcluster import OverclusterProtocol, evaluate_overclustering
from densessl.train.trainer import Trainer
from helpers import ROBUST_RUN, robust_config, run_config


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lr=-0.001", r"optim\.lr must be > 0, got -0\.001"),
        ("optim.lr=0", r"optim\.lr must be > 0"),
        ("optim.steps=0", r"optim\.steps must be >= 1"),
        ("optim.warmup_epochs=-1", r"optim\.warmup_epochs must be >= 0"),
        ("optim.momentum_teacher=1.5", r"optim\.momentum_teacher must be in \[0, 1\]"),
        ("optim.betas=[0.9,1.0]", r"optim\.betas"),
        ("optim.clip_grad=-1", r"optim\.clip_grad must be >= 0"),
        ("data.batch_size=0", r"data\.batch_size must be >= 1"),
        ("data.num_workers=-1", r"data\.num_workers must be >= 0"),
        ("data.on_corrupt=ignore", r"data\.on_corrupt must be 'skip' or 'raise'"),
        ("data.path=", r"data\.path is empty"),
        ("train.precision=fp8", r"train\.precision must be one of"),
        ("train.log_every=0", r"train\.log_every must be >= 1"),
        ("train.checkpoint_every=0", r"train\.checkpoint_every must be >= 1"),
        ("views.local_size=200", r"views\.local_size \(200\) is larger than views\.global_size"),
    ],
)
def test_impossible_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        robust_config(override)


def test_grid_smaller_than_the_method_needs_names_the_key(tmp_path):
    """SelfPatch's neighbour search needs >= 3x3 tokens; 16 px crops at patch 8 give 2x2."""
    cfg = run_config(
        "selfpatch", "views.global_size=16", "views.local_size=16", "data.num_workers=0"
    )
    with pytest.raises(ConfigError, match=r"views\.global_size=16 .* 2x2"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_scene_size_out_of_range_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.scenes_size=32"):
        Trainer(robust_config("data.scenes_size=32"), tmp_path / "run")


def test_fewer_images_than_a_batch_names_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data\.batch_size: \d+ images is fewer than one global batch \(32\)"
    ):
        Trainer(robust_config("data.batch_size=32"), tmp_path / "run")


class _NeverCalled(nn.Module):
    patch_size = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("features were extracted before K was checked")


class _TwoImages(torch.utils.data.Dataset):
    num_classes = 3
    ignore_index = 255

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        raise AssertionError("images were read before K was checked")


def test_k_larger_than_the_number_of_tokens_is_refused_before_embedding():
    protocol = OverclusterProtocol(image_size=32, num_clusters=(3, 100), seeds=(0,))
    with pytest.raises(ConfigError, match=r"num_clusters: K=100 .* 8 patch tokens"):
        evaluate_overclustering(_NeverCalled(), _TwoImages(), protocol, progress=False)


def _pretrain(out, *extra: str) -> list[str]:
    return ["pretrain", "--method", "dino", "--preset", "tiny", "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["optim.lr=-1"], "optim.lr must be > 0"),
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["optim.lr=fast"], "'optim.lr' expects a number"),
        (["data.path=MISSING"], "data.path: MISSING does not exist"),
        (["data.path=EMPTY"], "no image files under EMPTY"),
        (["data.path=FILE"], "data.path: FILE is a file"),
        (
            ["data.path=CORRUPT", "data.on_corrupt=raise"],
            "cannot decode image CORRUPT/a.png: empty file",
        ),
        (["--out", "FILE"], "--out FILE is a file"),
    ],
)
def test_cli_errors_exit_2_before_training(tmp_path, capsys, args, match):
    paths = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty"}
    paths |= {"FILE": tmp_path / "file.txt", "CORRUPT": tmp_path / "corrupt"}
    paths["EMPTY"].mkdir()
    paths["FILE"].write_text("x")
    paths["CORRUPT"].mkdir()
    (paths["CORRUPT"] / "a.png").write_bytes(b"")
    for key, path in paths.items():
        args = [a.replace(key, str(path)) for a in args]
        match = match.replace(key, str(path))
    out = tmp_path / "run"
    code = main([*_pretrain(out, *[a for a in ROBUST_RUN if "num_workers" in a]), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("densessl: error: ") and match in err
    assert "Traceback" not in err
    assert not (out / "checkpoints" / "last.pt").exists()
