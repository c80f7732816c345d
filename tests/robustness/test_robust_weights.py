"""Weight files that lie or are damaged, and the official DINO training checkpoints.

* ``meta.json`` of an export must agree with itself and with the weight shapes before a
  model is built: a claimed ``embed_dim=49152`` is refused without allocating (29 GB);
* densessl checkpoints with missing or malformed entries give a ``CheckpointError`` naming
  the entry, not ``KeyError`` / ``AttributeError``;
* DINO's ``main_dino.py`` stores its ``args`` as an ``argparse.Namespace``: that one class
  is allowed (for ``--init``, ``eval`` and ``export``), holding plain values only.

Already covered elsewhere: ``R/test_robust_untrusted.py`` (pickled code in any file),
``tests/test_backbone.py::test_bad_files_give_clear_errors``.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import densessl.evaluation.features as features
import densessl.models.loading as loading
from densessl.cli import main
from densessl.evaluation.features import build_extractor, from_export
from densessl.export import export_backbone
from densessl.io.checkpoint import CheckpointError, load_file, load_training_state
from densessl.models.arch_checks import check_buildable
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.train.trainer import Trainer
from densessl.train.warm_start import backbone_weights
from helpers import robust_config as tiny_config

TINY_VIT = BackboneConfig(arch="vit_tiny", depth=1, img_size=224, patch_size=16)  # DINO width


def _dino_args() -> argparse.Namespace:
    """The ``args`` of facebookresearch/dino ``main_dino.py`` (values of a ViT-S/16 run)."""
    return argparse.Namespace(
        arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True,
        momentum_teacher=0.996, use_bn_in_head=False, warmup_teacher_temp=0.04,
        teacher_temp=0.04, warmup_teacher_temp_epochs=0, use_fp16=True, weight_decay=0.04,
        weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=64, epochs=100,
        freeze_last_layer=1, lr=0.0005, warmup_epochs=10, min_lr=1e-06, optimizer="adamw",
        drop_path_rate=0.1, global_crops_scale=(0.4, 1.0), local_crops_number=8,
        local_crops_scale=(0.05, 0.4), data_path="/path/to/imagenet/train/", output_dir=".",
        saveckp_freq=20, seed=0, num_workers=10, dist_url="env://", local_rank=0, rank=0,
        world_size=8, gpu=0,
    )  # fmt: skip


def _dino_full_checkpoint(path, args=None) -> dict[str, torch.Tensor]:
    """Saved as ``main_dino.py`` saves ``checkpoint.pth`` (``utils.save_on_master``):
    DDP student ``module.backbone.*``, teacher ``backbone.*``, heads, the optimiser's state
    after a step, the epoch, ``args`` (a Namespace), the DINO loss' centre, the fp16 scaler."""
    backbone = build_backbone(TINY_VIT).model.state_dict()
    head = {"head.mlp.0.weight": torch.randn(8, 192), "head.last_layer.weight_g": torch.ones(8, 1)}
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    optimizer = torch.optim.AdamW(params)
    params[0].grad = torch.ones(4, 4)
    optimizer.step()
    torch.save(
        {
            "student": {f"module.{k}": v for k, v in {
                **{f"backbone.{k}": v.clone() for k, v in backbone.items()}, **head}.items()},
            "teacher": {**{f"backbone.{k}": v for k, v in backbone.items()}, **head},
            "optimizer": optimizer.state_dict(),
            "epoch": 101,
            "args": _dino_args() if args is None else args,
            "dino_loss": {"center": torch.zeros(1, 8)},
            "fp16_scaler": torch.amp.GradScaler("cpu").state_dict(),
        },
        path,
    )  # fmt: skip
    return backbone


def test_an_official_dino_full_checkpoint_loads_for_init_eval_and_export(tmp_path, capsys):
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    expected = _dino_full_checkpoint(path)
    assert isinstance(load_file(path)["args"], argparse.Namespace)
    weights = backbone_weights(path)  # --init
    assert all(torch.equal(weights[k], v) for k, v in expected.items())
    extractor = build_extractor(path)  # eval / viz --backbone
    assert extractor.source["kind"] == "dino"
    assert main(["export", str(path), "--out", str(tmp_path / "export")]) == 0, capsys.readouterr()
    assert json.loads((tmp_path / "export" / "meta.json").read_text())["embed_dim"] == 192
    if hasattr(torch.serialization, "safe_globals"):  # scoped to the load (torch >= 2.5)
        assert argparse.Namespace not in torch.serialization.get_safe_globals()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.zeros(3), r"args\.lr .*Namespace.* is 'Tensor'"),
        (argparse.Namespace(inner=1), r"args\.lr .* is 'Namespace'"),
        ({"ok": [1, 2], "bad": torch.ones(1)}, r"args\.lr\['bad'\] .* is 'Tensor'"),
        (_Payload(), r"not a loadable PyTorch checkpoint \(it holds (posix|nt)\.system"),
    ],
)
def test_a_namespace_holding_anything_but_plain_values_is_refused(tmp_path, value, match):
    args = _dino_args()
    args.lr = value
    path = tmp_path / "crafted.pth"
    _dino_full_checkpoint(path, args)
    for load in (load_file, load_backbone, build_extractor):
        with pytest.raises(CheckpointError, match=match):
            load(path)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ exports that lie
@pytest.fixture
def export(tmp_path):
    backbone = build_backbone(BackboneConfig(arch="vit_tiny", embed_dim=32, num_heads=2,
                                             depth=1, patch_size=8, img_size=32))  # fmt: skip
    return export_backbone(backbone, tmp_path / "export", verify=False)


def _edit_meta(folder, **changes) -> None:
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = meta
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(json.dumps(meta))


def _never_built(monkeypatch) -> None:
    def refuse(config):
        raise AssertionError(f"a model was built for {config}")

    monkeypatch.setattr(features, "build_backbone", refuse)
    monkeypatch.setattr(loading, "build_backbone", refuse)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (  # every copy agrees: only the weight shapes can tell
            {"backbone__embed_dim": 49152, "backbone__num_heads": 768, "embed_dim": 49152,
             "num_heads": 768, "timm_kwargs__embed_dim": 49152, "timm_kwargs__num_heads": 768},
            r"meta\.json: weights do not fit .*embed_dim 49152 but patch_embed\.proj\.weight is "
            r"\[32, 3, 8, 8\].*qkv",
        ),
        (  # num_heads leaves no trace in the shapes, but its three copies must agree
            {"backbone__num_heads": 4},
            r"meta\.json: contradicts itself: .*num_heads=4.*meta\.json says num_heads=2",
        ),
        ({"backbone__num_heads": 3}, r"meta\.json: cannot determine .*by num_heads 3"),
        (
            {"backbone__img_size": 800_000, "img_size": 800_000,
             "timm_kwargs__img_size": 800_000},
            r"img_size 800000 \(100000x100000 patches\) but pos_embed holds 16 positions",
        ),
        (
            {"backbone__depth": 12, "depth": 12, "timm_kwargs__depth": 12},
            r"depth 12 but the weights hold blocks 0",
        ),
        (
            {"backbone__patch_size": 16, "patch_size": 16, "timm_kwargs__patch_size": 16},
            r"patch_size 16 but patch_embed\.proj\.weight is \[32, 3, 8, 8\]",
        ),
        ({"backbone__cls_token": False, "class_token": False}, r"cls_token=False"),
    ],
)  # fmt: skip
def test_meta_json_that_disagrees_with_the_weights_is_refused_before_building(
    export, monkeypatch, capsys, changes, match
):
    _edit_meta(export, **changes)
    _never_built(monkeypatch)
    with pytest.raises(CheckpointError, match=match):
        from_export(export)
    code = main(["eval", "linear", "--backbone", str(export), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "meta.json" in err, err


def test_an_untouched_export_still_loads(export):
    assert from_export(export).model.config.resolved_num_heads == 2


def test_absurd_sizes_are_refused_whatever_the_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"more than any real backbone"):
        check_buildable(BackboneConfig(embed_dim=49152, num_heads=48), "x")
    with pytest.raises(CheckpointError, match=r"position tokens"):
        check_buildable(BackboneConfig(img_size=16 * 1000), "x")


# ------------------------------------------------------------ damaged densessl checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r"
    Trainer(tiny_config("optim.steps=1"), run).fit()
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _damaged(state: dict, key: str, value) -> dict:
    state = dict(state)
    if value is KeyError:
        del state[key]
    else:
        state[key] = value
    return state


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("backbone", KeyError, r"'backbone' entry should hold weights, found nothing"),
        ("backbone", {"pos_embed": "not a tensor"}, r"'backbone' entry holds non-tensors"),
        ("backbone", [1, 2], r"'backbone' entry should hold weights, found list"),
        ("config", "a string", r"last\.pt: cannot infer num_heads"),
    ],
)
def test_damaged_checkpoints_give_a_checkpoint_error_when_loading_weights(
    tmp_path, checkpoint, key, value, match
):
    path = tmp_path / "last.pt"
    torch.save(_damaged(checkpoint, key, value), path)
    for which in ("teacher", "student"):
        with pytest.raises(CheckpointError, match=match):
            load_backbone(path, which=which)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("optimizer", KeyError, r"'optimizer' is missing"),
        ("rng", {"torch": torch.zeros(3)}, r"'rng' holds a torch\.float32 tensor"),
        ("rng", KeyError, r"'rng' is missing"),
        ("step", "12", r"'step' is '12'"),
        ("model", {"x": 1}, r"'model' entry holds non-tensors"),
        ("backbone", KeyError, r"'backbone' entry should hold weights"),
    ],
)
def test_damaged_checkpoints_are_refused_before_a_resume_uses_them(
    tmp_path, checkpoint, key, value, match
):
    path = tmp_path / "last.pt"
    torch.save(_damaged(checkpoint, key, value), path)
    with pytest.raises(
        CheckpointError, match=rf"last\.pt is a damaged densessl checkpoint: .*{match}"
    ):
        load_training_state(path)


def test_a_resume_from_tensors_that_do_not_fit_is_a_checkpoint_error(tmp_path):
    """The config matches (so the resume is allowed) but a tensor has the wrong shape."""
    from densessl.io.checkpoint import save_atomic

    config = tiny_config("optim.steps=3")
    Trainer(config, tmp_path / "r").fit(stop_at=1)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3)
    save_atomic(state, last)
    with pytest.raises(CheckpointError, match=r"last\.pt does not fit this run .*size mismatch"):
        Trainer(config, tmp_path / "r").fit()
