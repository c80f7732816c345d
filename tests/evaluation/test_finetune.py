"""``densessl finetune seg``: both decoders train and score on scenes, exact resume, recipes."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation.finetune.api import finetune
from densessl.evaluation.finetune.inference import slide_logits
from densessl.evaluation.finetune.model import SegmentationModel, param_groups
from densessl.evaluation.finetune.pipeline import keep_ratio_size, step_batch
from densessl.evaluation.finetune.semfpn import SemanticFPN
from densessl.evaluation.finetune.settings import FinetuneSettings, ade20k_recipe, scenes_recipe
from densessl.io.checkpoint import CheckpointError, load_file
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.ops.schedules import poly_lr
from densessl.train.signals import TrainingInterrupted

SHORT = ["iterations=4", "batch_size=2", "data.num_images=8", "log_every=1", "checkpoint_every=2"]


def tiny(depth: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(
        BackboneConfig(
            arch="vit_tiny", patch_size=8, img_size=64, depth=depth, embed_dim=32, num_heads=2
        )
    )


@pytest.mark.parametrize("decoder", ["linear", "semfpn"])
def test_both_decoders_train_and_score_on_scenes(tmp_path, single_thread, decoder):
    record = finetune("seg", tiny(4), out=tmp_path / "run", decoder=decoder,
                      overrides=[*SHORT, "eval_flip=true", "eval_ratios=[0.75,1.0]"],
                      progress=False, verbose=False)  # fmt: skip
    res = record["results"]
    assert (
        0.0 <= res["miou"] <= 1.0 and len(res["per_class_iou"]) == record["dataset"]["num_classes"]
    )
    assert [h["step"] for h in res["history"]] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res["history"])
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["settings"]["decoder"] == decoder and saved["settings"]["eval_flip"] is True
    assert saved["tapped_blocks"] == ([0, 1, 2, 3] if decoder == "semfpn" else [3])


def test_resume_after_a_stop_signal_is_exact(tmp_path, single_thread):
    straight = finetune("seg", tiny(), out=tmp_path / "a", decoder="semfpn", overrides=SHORT,
                        progress=False, verbose=False)  # fmt: skip

    def kill_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as err:
        finetune("seg", tiny(), out=tmp_path / "b", decoder="semfpn", overrides=SHORT,
                 progress=False, verbose=False, on_step=kill_at_3)  # fmt: skip
    assert err.value.step == 3 and err.value.exit_code == 143
    assert load_file(tmp_path / "b" / "finetune.pt")["step"] == 3
    resumed = finetune("seg", tiny(), out=tmp_path / "b", decoder="semfpn", overrides=SHORT,
                       progress=False, verbose=False)  # fmt: skip
    assert resumed["results"]["resumed_from"] == 3
    a, b = (load_file(tmp_path / x / "finetune.pt")["model"] for x in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(r):
        return [(h["step"], h["loss"], h["lr"]) for h in r["results"]["history"]]

    assert losses(resumed) == losses(straight)
    assert resumed["results"]["miou"] == straight["results"]["miou"]


def test_other_settings_refuse_the_checkpoint_and_foreign_folders(tmp_path, single_thread):
    finetune(
        "seg", tiny(1), out=tmp_path / "run", overrides=SHORT[:3], progress=False, verbose=False
    )
    with pytest.raises(CheckpointError, match="other settings"):
        finetune("seg", tiny(1), out=tmp_path / "run", overrides=[*SHORT[:3], "lr=0.5"],
                 progress=False, verbose=False)  # fmt: skip
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="did not write"):
        finetune("seg", tiny(1), out=tmp_path / "mine", overrides=SHORT[:3], progress=False)
    with pytest.raises(ConfigError, match="unknown finetune setting"):
        finetune("seg", tiny(1), out=tmp_path / "x", overrides=["lrr=1"], progress=False)


def test_cli_finetune_help_lists_decoders_and_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "seg", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "semfpn" in text and "linear" in text and "layer_decay" in text and "38.3" in text


def test_cli_bad_setting_is_one_line_exit_2(tmp_path, capsys):
    code = main(["finetune", "seg", "--backbone", "random:vit_tiny", "--out", str(tmp_path / "r"),
                 "eval_mode=sideways"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "densessl: error:" in err and "eval_mode" in err and "Traceback" not in err


def test_recipes_hold_the_published_values():
    seg = ade20k_recipe("linear")  # Segmenter, rstrudel/segmenter @20d1bfa
    assert (seg.optimizer, seg.lr, seg.momentum, seg.weight_decay, seg.power) == (
        "sgd",
        1e-3,
        0.9,
        0,
        0.9,
    )
    assert (seg.iterations, seg.batch_size, seg.crop_size, seg.min_lr) == (160_000, 8, 512, 1e-5)
    assert (seg.eval_mode, seg.eval_window, seg.eval_stride, seg.drop_path) == (
        "slide",
        512,
        512,
        0.1,
    )
    fpn = ade20k_recipe("semfpn")  # SelfPatch @81aef14 semfpn_vit-s16_512x512_40k_ade20k.py
    assert (fpn.optimizer, fpn.lr, fpn.weight_decay, fpn.warmup_iters) == (
        "adamw",
        6e-5,
        0.01,
        1500,
    )
    assert (fpn.iterations, fpn.batch_size, fpn.power, fpn.min_lr) == (40_000, 16, 1.0, 0.0)
    assert fpn.tapped_blocks(12) == [2, 5, 8, 11] and fpn.eval_mode == "whole"
    assert scenes_recipe("semfpn", 64).crop_size == 64
    with pytest.raises(ValueError, match=r"finetune\.blocks"):
        FinetuneSettings(decoder="semfpn", blocks=(1, 2))


def test_poly_schedule_matches_mmcv_and_segmenter_formulas():
    # mmcv PolyLrUpdaterHook + linear warm-up: regular * (1 - (1 - it/W)(1 - ratio))
    assert poly_lr(0, 40_000, 6e-5, 0.0, 1.0, 1500, 1e-6) == pytest.approx(6e-5 * 1e-6)
    assert poly_lr(750, 40_000, 6e-5, 0.0, 1.0, 1500, 1e-6) == pytest.approx(
        6e-5 * (1 - 750 / 40_000) * (1 - 0.5 * (1 - 1e-6))
    )
    assert poly_lr(1500, 40_000, 6e-5, 0.0, 1.0, 1500) == pytest.approx(6e-5 * (1 - 1500 / 40_000))
    # Segmenter PolynomialLR: (lr - min) (1 - it/max)^0.9 + min
    assert poly_lr(0, 100, 1e-3, 1e-5, 0.9) == pytest.approx(1e-3)
    assert poly_lr(50, 100, 1e-3, 1e-5, 0.9) == pytest.approx((1e-3 - 1e-5) * 0.5**0.9 + 1e-5)
    assert poly_lr(100, 100, 1e-3, 1e-5, 0.9) == pytest.approx(1e-5)


def test_semfpn_shapes_and_pyramid():
    maps = [torch.randn(2, 32, 4, 4) for _ in range(4)]
    assert SemanticFPN(32, 5, 16, "none")(maps).shape == (2, 5, 4, 4)  # SelfPatch seg: stride 16
    assert SemanticFPN(32, 5, 16, "simple").eval()(maps).shape == (2, 5, 16, 16)  # stride 4


def test_param_groups_layer_decay_and_no_decay():
    net = tiny(2)
    from densessl.evaluation.finetune.linear_decoder import LinearDecoder

    model = SegmentationModel(net, LinearDecoder(32, 3), [1], True)
    groups = param_groups(model, 1.0, 0.05, layer_decay=0.5)
    scales = {g["lr_scale"] for g in groups}
    assert scales == {1.0, 0.5, 0.25, 0.125}  # decoder/norm, block 1, block 0, embeddings
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            plain = any(k in names[id(p)] for k in ("pos_embed", "cls_token", "norm"))
            assert g["weight_decay"] == (0.0 if plain else 0.05)


def test_pipeline_is_seeded_per_step_and_pads_with_ignore():
    class Two:
        num_classes = 2

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 20, 30, dtype=torch.uint8), "label": torch.ones(20, 30)}

    s = scenes_recipe("linear", 32, batch_size=2, photometric=True)
    a, b = step_batch(Two(), s, 5), step_batch(Two(), s, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (2, 3, 32, 32)
    assert set(a[1].unique().tolist()) <= {1, 255}
    # mmcv 2.1.0 ``mmcv.image.geometric.rescale_size`` agreed on 2,000 random sizes (scratch)
    assert keep_ratio_size(20, 30, (2048, 512)) == (512, 768)  # short side to 512
    assert keep_ratio_size(100, 1000, (2048, 512)) == (205, 2048)  # long side capped


def test_sliding_window_averages_overlaps():
    calls = []

    def model(x):
        calls.append(tuple(x.shape[-2:]))
        return torch.ones(1, 2, *x.shape[-2:])

    out = slide_logits(model, torch.zeros(1, 3, 16, 40), window=16, stride=12)
    assert calls == [(16, 16)] * 3 and out.shape == (1, 2, 16, 40)  # anchors 0, 12, 24 (flush)
    assert torch.allclose(out, torch.ones_like(out))


def _fill(shape, k):
    n = int(torch.tensor(shape).prod())
    return (0.3 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k)).float().reshape(shape)


#: mmseg's own FPN neck + FPNHead (open-mmlab/mmsegmentation v1.2.2 from PyPI,
#: ``mmseg/models/necks/fpn.py`` and ``mmseg/models/decode_heads/fpn_head.py``, the same code
#: as the 0.x that SelfPatch used; mmcv-lite 2.1.0, CPU), run once in a scratch environment
#: on the weights and inputs built below (our state dict mapped to mmseg's names), in eval
#: mode: D=8, FPN 6, head 4, 3 classes. Our modules matched to max |diff| 0.0.
MMSEG_FPN = {
    (4, 4, 4, 4): (2.6036571343429387, [0.393391996, 0.063979841, -0.222810819]),
    (16, 8, 4, 2): (-72.80079324834514, [0.550125777, -0.285063326, -0.442841202]),
}


@pytest.mark.parametrize("sizes", list(MMSEG_FPN))
def test_semantic_fpn_equals_mmseg_fpn_and_fpnhead(sizes):
    model = SemanticFPN(8, 3, 16, "none", 6, 4, 0.1).eval()
    state = {}
    for k, (name, t) in enumerate(model.state_dict().items()):
        if "num_batches" in name:
            state[name] = t
        elif "running_var" in name:
            state[name] = 1 + _fill(t.shape, k).abs()
        else:
            state[name] = _fill(t.shape, k)
    model.load_state_dict(state)
    x = [_fill((2, 8, s, s), 10 + i) * 3 for i, s in enumerate(sizes)]
    with torch.no_grad():
        out = model(x)
    total, corner = MMSEG_FPN[sizes]
    assert out.shape == (2, 3, sizes[0], sizes[0])
    assert float(out.double().sum()) == pytest.approx(total, abs=1e-4)
    assert out[0, :, 0, 0].tolist() == pytest.approx(corner, abs=1e-5)


def test_cli_finetune_a_run_then_rerun_rescores(tiny_run, tmp_path, capsys, single_thread):
    out = tmp_path / "ft"
    args = ["finetune", "seg", "--backbone", str(tiny_run), "--out", str(out), "--no-progress",
            "--decoder", "semfpn", "iterations=2", "batch_size=2", "data.num_images=6"]  # fmt: skip
    assert main(args) == 0
    first = json.loads((out / "finetune.json").read_text())
    assert first["backbone"]["kind"] == "run" and first["results"]["resumed_from"] == 0
    assert main(args) == 0  # finished: nothing left to train, the same model is scored again
    again = json.loads((out / "finetune.json").read_text())
    assert (
        again["results"]["resumed_from"] == 2
        and again["results"]["miou"] == first["results"]["miou"]
    )
    assert "mIoU" in capsys.readouterr().out


def test_cli_missing_dataset_root_is_one_line(tmp_path, capsys):
    code = main(["finetune", "seg", "--backbone", "random:vit_tiny", "--dataset", "ade20k",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "needs root" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written on bad input


def test_drop_path_rises_linearly_to_the_last_block():
    from densessl.evaluation.finetune.model import set_drop_path

    net = tiny(3)
    set_drop_path(net, 0.2)
    blocks = net.model.blocks
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    assert blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert blocks[2].drop_path2.drop_prob == pytest.approx(0.2)


def test_crop_redraws_while_one_class_dominates():
    from densessl.evaluation.finetune.pipeline import _crop_box

    label = torch.zeros(8, 32, dtype=torch.long)
    label[:, 24:] = 1  # a crop at left 19-21 holds 3-5 of 8 columns of class 1: ratio < 0.75
    gen = torch.Generator().manual_seed(0)
    mixed = 0
    for _ in range(40):
        _, left = _crop_box(label, 8, 0.75, gen)
        mixed += 19 <= left <= 21
    # one draw is mixed with p 3/25 (~5 of 40); up to 10 redraws: p 1 - (22/25)^10 = 0.72 (~29)
    assert mixed >= 20


class _WindowModel(torch.nn.Module):
    """A content-dependent toy segmenter with fixed weights (the parity below)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 5, padding=2)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_(
                0.3 * torch.sin(torch.arange(w.numel(), dtype=torch.float64) * 0.7).reshape(w.shape)
            )
            self.conv.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))

    def forward(self, x):
        return self.conv(x) * (1 + x.mean(dim=(1, 2, 3), keepdim=True))


#: Segmenter's own ``inference`` (rstrudel/segmenter @20d1bfa, ``segm/model/utils.py``:
#: ``sliding_window`` + ``merge_windows`` + resize + softmax; run once in a scratch
#: environment with ``segm.utils.torch`` stubbed) on :class:`_WindowModel` and the 40 x 72
#: image below: probabilities at pixels (0, 0) and (20, 50), and class 0's sum. Ours
#: matched to max |diff| 2.4e-7 (window 48 is above the short side: both resize it up).
SEGMENTER_SLIDE = {
    (32, 24): (
        [0.9002450704, 0.0901149138, 0.0096400454],
        [0.4350964725, 0.0021348192, 0.5627686977],
        1115.7435802753316,
    ),
    (48, 16): (
        [0.7870621681, 0.1389106512, 0.0740271508],
        [0.5288633108, 0.0406424216, 0.4304942190],
        1438.209262125194,
    ),
}


@pytest.mark.parametrize(("window", "stride"), list(SEGMENTER_SLIDE))
def test_sliding_window_equals_segmenter_inference(window, stride):
    n = 3 * 40 * 72
    image = (0.5 + 0.5 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.031)).float()
    with torch.no_grad():
        logits = slide_logits(_WindowModel().eval(), image.reshape(1, 3, 40, 72), window, stride)
    probs = torch.nn.functional.interpolate(logits, size=(40, 72), mode="bilinear").softmax(1)[0]
    first, middle, total = SEGMENTER_SLIDE[(window, stride)]
    assert probs[:, 0, 0].tolist() == pytest.approx(first, abs=1e-6)
    assert probs[:, 20, 50].tolist() == pytest.approx(middle, abs=1e-6)
    assert float(probs[0].double().sum()) == pytest.approx(total, rel=1e-6)


def test_miou_averages_classes_with_a_non_empty_union_as_mmseg():
    from densessl.evaluation.finetune.inference import evaluate_segmenter

    class One:
        num_classes, ignore_index = 3, 255

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {
                "image": torch.zeros(3, 16, 16, dtype=torch.uint8),
                "label": torch.zeros(16, 16),
            }

    model = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # class 0 everywhere
    s = scenes_recipe("linear", 16, eval_mode="whole")
    out = evaluate_segmenter(model, One(), s, progress=False)
    assert out["miou"] == 1.0 and out["per_class_iou"] == [1.0, 0.0, 0.0]  # 1 and 2: no union
