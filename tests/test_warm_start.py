import pytest
import torch

from densessl.checkpoint import CheckpointError
from densessl.config import build_run_config
from densessl.methods import get_method
from densessl.train import Trainer

FAST = [
    "data.scenes_num_images=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "train.precision=fp32",
    "train.progress=false",
    "backbone.depth=2",
    "backbone.embed_dim=64",
    "backbone.num_heads=2",
    "dino.out_dim=64",
    "dino.hidden_dim=64",
    "dino.bottleneck_dim=32",
    "optim.steps=2",
]


def _config(*extra: str):
    return build_run_config("dino", get_method("dino").Params, "tiny", [*FAST, *extra])


def test_init_loads_the_source_teacher_into_student_and_teacher(tmp_path):
    source = Trainer(_config(), tmp_path / "source")
    source.fit()
    expected = source.method.teacher_backbone().state_dict()
    fresh = Trainer(_config("train.seed=5"), tmp_path / "fresh", init=str(tmp_path / "source"))
    for backbone in (fresh.method.student_backbone(), fresh.method.teacher_backbone()):
        got = backbone.state_dict()
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
    assert fresh.step == 0  # weights only: a new run, not a resume


def test_init_with_a_different_architecture_names_the_file(tmp_path):
    Trainer(_config(), tmp_path / "source").fit()
    with pytest.raises(CheckpointError, match="source"):
        Trainer(_config("backbone.depth=3"), tmp_path / "other", init=str(tmp_path / "source"))
    with pytest.raises(CheckpointError, match="without checkpoints"):
        Trainer(_config(), tmp_path / "x", init=str(tmp_path))
