"""FLSL: sampling windows, attention modes, loss terms, the method's step, a tiny run.

Pinned values come from the official code, QingSuML/FLSL @acb5d6f (``main_flsl.py``:
``DataAugmentationFLSL._sampling_mask``, ``FLSLLoss``, the body of ``train_one_batch``;
``utils.py``: ``flsl_meanshift``, ``NonEmptyPriorKL``, ``Centering``, ``cosine_scheduler``,
``get_2d_sincos_pos_embed``; ``vision_transformer.py``: ``FLSLhead``), run once on CPU
(torch 2.14, a one-process gloo group for ``Centering``) on the fixed inputs built below;
its code is not part of this repository.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from densessl.data.views.multicrop import MultiCropViews, ViewsConfig
from densessl.errors import ConfigError
from densessl.methods.base import StepInfo
from densessl.methods.flsl import method as flsl_module
from densessl.methods.flsl.loss import FLSLLoss, nonparametric_attention, volume_kl
from densessl.methods.flsl.method import sincos_pos_embed_2d
from densessl.methods.flsl.sampling import num_window_samples, window_sample_indices
from densessl.ops.schedules import cosine
from densessl.train.trainer import Trainer, read_metrics
from helpers import CPU, VIT_2X64, build_method, head_sizes, learning_config, random_crops, scenes

SMALL = [*scenes(64, 4), *CPU, *VIT_2X64, *head_sizes("flsl", 64, 64, 32)]
INFO = StepInfo(step=0, total_steps=10, steps_per_epoch=5)


def _method(*extra: str):
    return build_method("flsl", *SMALL, *extra)


# ----------------------------------------------------------------------- sampling windows
#: Official ``_sampling_mask(g, s)`` (random_sampling False) with ``random.random()`` forced
#: to 0.1 / 0.3 / 0.6 / 0.9: the selected token indices for the four corners.
PINNED_MASKS = {
    (14, 3): [
        [0, 3, 6, 9, 42, 45, 48, 51, 84, 87, 90, 93, 126, 129, 132, 135],
        [2, 5, 8, 11, 44, 47, 50, 53, 86, 89, 92, 95, 128, 131, 134, 137],
        [28, 31, 34, 37, 70, 73, 76, 79, 112, 115, 118, 121, 154, 157, 160, 163],
        [30, 33, 36, 39, 72, 75, 78, 81, 114, 117, 120, 123, 156, 159, 162, 165],
    ],
    (6, 2): [[0, 2, 4, 12, 14, 16, 24, 26, 28]],  # the 6x6 grid is tiled exactly
    (8, 3): [[0, 3, 24, 27], [2, 5, 26, 29], [16, 19, 40, 43], [18, 21, 42, 45]],
    (5, 2): [[0, 2, 10, 12], [1, 3, 11, 13], [5, 7, 15, 17], [6, 8, 16, 18]],
}


@pytest.mark.parametrize(("grid", "window"), list(PINNED_MASKS))
def test_window_sampling_matches_official_patterns(grid, window):
    index = window_sample_indices((grid, grid), window, 200, generator=torch.Generator())
    assert index.shape == (200, num_window_samples((grid, grid), window))
    patterns = {tuple(row) for row in index.tolist()}
    assert patterns == {tuple(p) for p in PINNED_MASKS[(grid, window)]}


@pytest.mark.parametrize(("grid", "window"), [((14, 14), 3), ((6, 6), 2), ((7, 5), 2)])
def test_random_window_sampling_takes_one_token_per_window(grid, window):
    gen = torch.Generator().manual_seed(3)
    index = window_sample_indices(grid, window, 64, random_sampling=True, generator=gen)
    height, width = grid
    rows_w, cols_w = height // window, width // window
    rows, cols = index // width, index % width

    def tiles_one_corner_block(r: list[int], c: list[int]) -> bool:
        for r0 in {0, height - rows_w * window}:
            for c0 in {0, width - cols_w * window}:
                inside = all(0 <= ri - r0 < rows_w * window for ri in r) and all(
                    0 <= ci - c0 < cols_w * window for ci in c
                )
                pairs = zip(r, c, strict=True)
                cells = {((ri - r0) // window, (ci - c0) // window) for ri, ci in pairs}
                if inside and len(cells) == rows_w * cols_w:  # every window exactly once
                    return True
        return False

    assert all(map(tiles_one_corner_block, rows.tolist(), cols.tolist()))
    assert (index.diff(dim=1) > 0).all()  # raster order, as the official boolean mask
    first = zip(rows[0].tolist(), cols[0].tolist(), strict=True)
    offsets = {(ri % window, ci % window) for ri, ci in first}
    assert len(offsets) > 1  # not always the top-left token
    with pytest.raises(ValueError, match="does not fit"):
        window_sample_indices((2, 2), 3, 1)


# ----------------------------------------------------------------------- method step, pinned
# The official train_one_batch body (flsl_meanshift, FLSLhead, FLSLLoss) on fixed tokens:
# teacher view 4x4, one student global view 4x4 (window 2), two local views 3x3 (window 2),
# B=2, D=8, K=16, α_sa = 1/√8, α_ca = 2/√8, (υ, η, γ) = (0.3, 1, 5), τt = 0.05, τs = 0.1.
INDEX_GLOBAL = [[0, 3, 13, 14], [5, 6, 8, 15]]
INDEX_LOCAL = [[[4], [8]], [[0], [5]]]  # [view][image]
PINNED_STEP = {
    "loss": 10.102156639099121,
    "meanshift_loss": 0.22148990631103516,
    "kmeans_loss": 5.370568752288818,
    "vmr": 0.9330282211303711,
}
PINNED_STEP_CENTERING = {"loss": 10.298450469970703, "kmeans_loss": 5.566862106323242}
PINNED_CENTER = [
    0.14744126796722412, 0.27970969676971436, -0.1110723465681076, -0.23886536061763763,
    -0.27207717299461365, 0.3069038689136505, -0.24911725521087646, -0.3935725688934326,
    -0.024601059034466743, -0.25437766313552856, -0.48938748240470886, -0.09295689314603806,
    -0.18594177067279816, 0.193386971950531, 0.26569509506225586, 0.05927291885018349,
]  # fmt: skip
# student global view, image 1, sampled token 2
PINNED_MODE_S = [
    -1.1828383207321167, -0.02064855396747589, 1.7823749780654907, -1.0484013557434082,
    3.3622844219207764, -0.5649550557136536, -0.45669788122177124, 1.7147918939590454,
]  # fmt: skip
# second local view, image 1: its teacher positive
PINNED_MODE_T = [
    -0.433630108833313, -0.16752952337265015, 0.8759824633598328, 0.40051501989364624,
    0.31629878282546997, -0.3676697313785553, -0.7839437127113342, -0.873664140701294,
]  # fmt: skip
PINNED_SUMS = {"mode_s": 13.656209945678711, "mode_t": 0.22028285264968872}
PINNED_HEAD_SQ = {"student": 21.535625457763672, "teacher": 21.71765899658203}


def _pinned_inputs():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 16, 8, generator=gen)
    student_global = torch.randn(2, 16, 8, generator=gen)
    student_local = torch.randn(4, 9, 8, generator=gen)
    head_weights = []
    for _ in range(2):  # student head, then teacher head (official parameter order)
        shapes = [(32, 8), (32,), (32, 32), (32,), (8, 32), (8,), (16, 8)]
        head_weights.append([torch.randn(s, generator=gen) * 0.5 for s in shapes])
    center = torch.randn(1, 16, generator=gen) * 0.3
    return teacher, student_global, student_local, head_weights, center


def _pinned_method(monkeypatch, *extra: str):
    method, cfg = _method(
        "backbone.embed_dim=8",
        "backbone.num_heads=2",
        "backbone.depth=1",
        "backbone.img_size=32",
        "views.global_size=32",
        "views.local_size=24",
        "flsl.out_dim=16",
        "flsl.hidden_dim=32",
        "flsl.bottleneck_dim=8",
        "flsl.sa_scale=1.0",
        "flsl.ca_scale=2.0",
        "flsl.meanshift_weight=0.3",
        "flsl.teacher_temp=0.05",
        "flsl.warmup_teacher_temp=0.05",
        *extra,
    )
    teacher, student_global, student_local, head_weights, center = _pinned_inputs()
    for network, weights in zip((method.student, method.teacher), head_weights, strict=True):
        head = network.head
        params = [head.mlp[i].weight for i in (0, 2, 4)] + [head.mlp[i].bias for i in (0, 2, 4)]
        params = [params[0], params[3], params[1], params[4], params[2], params[5]]
        params.append(head.last_layer.parametrizations.weight.original1)
        with torch.no_grad():
            for param, value in zip(params, weights, strict=True):
                param.copy_(value)
    fake = {32: student_global.reshape(2, 4, 4, 8), 24: student_local.reshape(4, 3, 3, 8)}
    monkeypatch.setattr(method.student.backbone, "tokens", lambda x: (None, fake[x.shape[-1]]))
    monkeypatch.setattr(
        method.teacher.backbone, "tokens", lambda x: (None, teacher.reshape(2, 4, 4, 8))
    )
    queue = [INDEX_GLOBAL, *INDEX_LOCAL]
    monkeypatch.setattr(
        flsl_module, "window_sample_indices", lambda *a, **k: torch.tensor(queue.pop(0))
    )
    crops = [torch.zeros(2, 3, s, s) for s in cfg.views.view_sizes()]
    return method, crops, center


def test_method_step_matches_official_code(monkeypatch):
    method, crops, _ = _pinned_method(monkeypatch)
    modes: list[torch.Tensor] = []  # per view: student mode, then teacher positive
    real = flsl_module.nonparametric_attention
    monkeypatch.setattr(
        flsl_module, "nonparametric_attention", lambda *a: modes.append(real(*a)) or modes[-1]
    )
    heads = {}
    for name, head in (("student", method.student.head), ("teacher", method.teacher.head)):
        head.register_forward_hook(lambda m, i, o, name=name: heads.__setitem__(name, o))
    out = method.loss({"crops": crops}, StepInfo(0, 10, 5))
    for key, value in PINNED_STEP.items():
        assert out[key].item() == pytest.approx(value, rel=1e-5), key
    assert torch.allclose(modes[0][1, 2], torch.tensor(PINNED_MODE_S), atol=1e-5)
    assert torch.allclose(modes[5][1, 0], torch.tensor(PINNED_MODE_T), atol=1e-5)
    mode_s = sum(m.sum() for m in modes[0::2]).item()
    mode_t = sum(m.sum() for m in modes[1::2]).item()
    assert mode_s == pytest.approx(PINNED_SUMS["mode_s"], abs=1e-4)
    assert mode_t == pytest.approx(PINNED_SUMS["mode_t"], abs=1e-4)
    for name, value in PINNED_HEAD_SQ.items():
        assert heads[name].pow(2).sum().item() == pytest.approx(value, rel=1e-5)
    assert out["assignment_entropy"].item() == pytest.approx(math.log(16) - PINNED_STEP["vmr"])


def test_method_step_with_teacher_centering_matches_official_code(monkeypatch):
    method, crops, center = _pinned_method(monkeypatch, "flsl.teacher_centering=true")
    method.flsl_loss.kmeans.center.copy_(center)
    out = method.loss({"crops": crops}, StepInfo(0, 10, 5))
    for key, value in PINNED_STEP_CENTERING.items():
        assert out[key].item() == pytest.approx(value, rel=1e-5), key
    assert out["vmr"].item() == pytest.approx(PINNED_STEP["vmr"], rel=1e-5)
    updated = method.flsl_loss.kmeans.center.flatten()
    assert torch.allclose(updated, torch.tensor(PINNED_CENTER), atol=1e-6)


# ----------------------------------------------------------------------- loss on fixed values
# Official FLSLLoss(0.1, [0.04, 0.07], NonEmptyPriorKL(10), None, [0.03, 1, 5]) at epoch 1.
PINNED_LOGITS = {
    "loss": 39.17578125,
    "meanshift_loss": 1.7325928211212158,
    "kmeans_loss": 37.58670425415039,
    "vmr": 0.3074195384979248,
}


def test_loss_terms_match_official_code():
    gen = torch.Generator().manual_seed(1)
    x, mode = torch.randn(12, 8, generator=gen), torch.randn(12, 8, generator=gen)
    student = torch.randn(12, 10, generator=gen) * 2
    teacher = torch.randn(12, 10, generator=gen) * 0.3
    loss = FLSLLoss(10, student_temp=0.1, meanshift_weight=0.03, kmeans_weight=1.0, vmr_weight=5.0)
    terms = loss(x, mode, student, teacher, teacher_temp=0.07)
    for key, value in PINNED_LOGITS.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5), key
    # the regulariser off: logged, not added; a per-call υ overrides the constructor's
    off = FLSLLoss(10, volume_maximization=False)(x, mode, student, teacher, 0.07, 0.5)
    expected = 0.5 * PINNED_LOGITS["meanshift_loss"] + PINNED_LOGITS["kmeans_loss"]
    assert off["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert off["vmr"].item() == pytest.approx(PINNED_LOGITS["vmr"], rel=1e-5)


def test_attention_and_regulariser_formulas():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 3, 5, generator=gen), torch.randn(2, 7, 5, generator=gen)
    weights = torch.softmax(0.7 * torch.einsum("nqd,nkd->nqk", q, k), dim=-1)
    torch.testing.assert_close(nonparametric_attention(q, k, 0.7), weights @ k)
    with pytest.raises(ValueError, match=r"\[n, q, D\]"):
        nonparametric_attention(q, k[:1], 0.7)
    uniform = torch.full((4, 6), 1 / 6)
    kl, entropy = volume_kl(uniform)
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and entropy.item() == pytest.approx(
        math.log(6)
    )
    one_hot = torch.eye(6)[[2, 2, 2]]
    assert volume_kl(one_hot)[0].item() == pytest.approx(math.log(6), abs=1e-6)
    probs = torch.softmax(torch.randn(5, 6, generator=gen), dim=-1).requires_grad_(True)
    volume_kl(probs)[0].backward()
    mean = probs.detach().mean(0)
    torch.testing.assert_close(probs.grad, ((mean.log() + 1) / 5).expand(5, 6))


def test_schedules_match_official_code():
    # official cosine_scheduler(-0.03, 0.03, epochs=3, niter_per_ep=4) at iterations 0, 5, 11
    official = [-0.03, -0.007764571353075622, 0.028977774788672046]
    ours = [cosine(step, 12, -0.03, 0.03) for step in (0, 5, 11)]
    assert ours == pytest.approx(official, rel=1e-9)
    method, _ = _method(
        "flsl.meanshift_weight_start=0.0",
        "flsl.sa_scale_start=0.05",
        "flsl.sa_scale=0.1",
        "flsl.ca_scale=0.2",
    )
    start, end = method.schedules(StepInfo(0, 10, 5)), method.schedules(StepInfo(10, 10, 5))
    assert start["meanshift_weight"] == 0.0  # the official code would silently use υ here
    assert end["meanshift_weight"] == pytest.approx(0.03)
    assert start["sa_scale"] == pytest.approx(0.05 / 8)
    assert end["sa_scale"] == pytest.approx(0.1 / 8)
    assert start["ca_scale"] == end["ca_scale"] == pytest.approx(0.2 / 8)


#: Official get_2d_sincos_pos_embed(16, 4): token 6 (row 1, column 2) and the table's sum.
PINNED_SINCOS_ROW = [
    0.9092974268256817, 0.19866933079506122, 0.01999866669333308, 0.0019999986666669333,
    -0.4161468365471424, 0.9800665778412416, 0.9998000066665778, 0.9999980000006666,
    0.8414709848078965, 0.09983341664682815, 0.009999833334166664, 0.0009999998333333417,
    0.5403023058681398, 0.9950041652780258, 0.9999500004166653, 0.9999995000000417,
]  # fmt: skip


def test_sincos_table_matches_official_code():
    table = sincos_pos_embed_2d(16, (4, 4))
    assert table.shape == (16, 16)
    torch.testing.assert_close(table[6], torch.tensor(PINNED_SINCOS_ROW), atol=1e-6, rtol=0)
    assert table.double().sum().item() == pytest.approx(116.92614891062729, abs=1e-4)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, (2, 2))


# ----------------------------------------------------------------------- views and architecture
def test_nested_views_cut_student_crops_from_the_teacher_crop():
    cfg = ViewsConfig(
        num_global=2, global_size=32, first_scale=(0.8, 1.0), global_scale=(0.5, 1.0),
        num_local=2, local_size=16, local_scale=(0.05, 0.4), nested=True, flip_prob=0.0,
    )  # fmt: skip
    views = MultiCropViews(cfg)
    image = torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8)
    for seed in range(20):
        boxes = views(image, torch.Generator().manual_seed(seed))["boxes"]
        parent = boxes[0]
        area = lambda b: float((b[2] - b[0]) * (b[3] - b[1]))  # noqa: E731
        assert 0.8 * 120 * 160 * 0.97 <= area(parent) <= 120 * 160
        for k, box in enumerate(boxes[1:], start=1):
            assert (box[:2] >= parent[:2]).all() and (box[2:] <= parent[2:]).all()
            low, high = (0.5, 1.0) if k == 1 else (0.05, 0.4)
            assert low * 0.9 <= area(box) / area(parent) <= high * 1.1
    with pytest.raises(ValueError, match="min_overlap"):
        ViewsConfig(nested=True, min_overlap=0.1)
    with pytest.raises(ValueError, match="first_scale"):
        ViewsConfig(first_scale=(0.5, 1.2))


def test_architecture_and_teacher_copy():
    method, _ = _method()
    backbone = method.student.backbone
    assert not backbone.has_cls_token
    pos = backbone.model.pos_embed
    assert not pos.requires_grad
    torch.testing.assert_close(pos[0], sincos_pos_embed_2d(64, (8, 8)))
    student = dict(method.student.named_parameters())
    for name, param in method.teacher.named_parameters():
        assert torch.equal(student[name], param) and not param.requires_grad
    names = [name for group in method.param_groups(0.04) for name in group["names"]]
    assert "student.backbone.model.pos_embed" not in names
    assert sum("last_layer" in n for n in names) == 1
    assert method.teacher.backbone.config.drop_path_rate == 0.0


def test_config_requirements():
    with pytest.raises(ValueError, match="cls_token=false"):
        _method("backbone.cls_token=true")
    with pytest.raises(ValueError, match="nested=true"):
        _method("views.nested=false")
    with pytest.raises(ValueError, match="does not fit"):
        _method("flsl.window_local=5")
    with pytest.raises(ConfigError, match=r"flsl\.vmr_weight"):
        _method("flsl.vmr_weight=-1")
    with pytest.raises(ConfigError, match=r"flsl\.sa_scale"):
        _method("flsl.sa_scale=0")


def test_loss_shapes_finite_and_gradients(single_thread):
    method, cfg = _method()
    crops = random_crops(cfg, batch=3)
    rows = {}
    method.student.head.register_forward_hook(lambda m, i, o: rows.__setitem__("s", o.shape))
    out = method.loss({"crops": crops}, INFO)
    assert rows["s"] == (3 * (16 + 4 + 4), 64)  # 8x8 global (window 2) + two 4x4 locals
    expected = {
        "loss", "meanshift_loss", "kmeans_loss", "vmr", "assignment_entropy", "clusters_used",
        "teacher_entropy", "teacher_batch_entropy", "patch_std", "sample_std", "teacher_temp",
        "meanshift_weight", "sa_scale", "ca_scale",
    }  # fmt: skip
    assert expected <= set(out)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert 1 <= out["clusters_used"].item() <= 64
    out["loss"].backward()
    block = method.student.backbone.model.blocks[0].attn.qkv.weight
    assert block.grad is not None and block.grad.abs().sum() > 0
    assert method.student.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.student.head.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student.backbone.model.pos_embed.grad is None


def test_each_term_reaches_the_backbone(single_thread):
    """L_ms alone and L_km alone both train the backbone (the mean-shift has no stop-grad)."""
    for extra in (
        ["flsl.kmeans_weight=0", "flsl.volume_maximization=false"],
        ["flsl.meanshift_weight=0", "flsl.volume_maximization=false"],
        ["flsl.meanshift_weight=0", "flsl.kmeans_weight=0"],
    ):
        method, cfg = _method(*extra)
        method.loss({"crops": random_crops(cfg, batch=2)}, INFO)["loss"].backward()
        grad = method.student.backbone.model.blocks[-1].mlp.fc2.weight.grad
        assert grad is not None and grad.abs().sum() > 0, extra


# ----------------------------------------------------------------------- distributed
def _vmr_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        probs = _vmr_inputs()[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
        kl, _ = volume_kl(probs)
        kl.backward()
        grad = probs.grad.clone()
        torch.distributed.all_reduce(grad)  # DDP averages gradients of shared parameters;
        grad /= 2  # here each rank owns its rows, so the average is their gradient / 2.
        torch.save({"kl": kl.detach(), "grad": probs.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _vmr_inputs() -> torch.Tensor:
    return torch.softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(4)), dim=-1)


def test_volume_regulariser_two_processes_equal_one(tmp_path: Path) -> None:
    """2 processes x 4 rows give the one-process KL on 8 rows; with DDP's averaging (÷2) of
    the identity backward, each process's gradient is the exact one for its rows."""
    mp.spawn(_vmr_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    probs = _vmr_inputs().requires_grad_(True)
    kl, _ = volume_kl(probs)
    kl.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["kl"], kl.detach())
        torch.testing.assert_close(result["grad"] / 2, probs.grad[rank * 4 : (rank + 1) * 4])


# ----------------------------------------------------------------------- tiny run
def test_tiny_preset_learns_on_scenes(tmp_path, single_thread):
    """The first 60 steps of the tiny recipe (its 600-step schedules) on synthetic scenes: the
    loss falls, the k-means term falls below ln K, the clusters stay in use, all logged.

    Measured on 2 shared CPU cores (1 thread, batch 16, ~0.25 s/step, 19 s in all), steps
    10 → 60: loss 5.46 → 4.85, k-means 4.68 (4.72 at step 20) → 4.61 (ln K = 5.55), VMR
    0.155 → 0.047, mean-assignment entropy 5.39 → 5.50, 22-24 prototypes are the teacher's
    argmax, teacher entropy ~3.4, mean-shift loss 0.24 → 0.23.
    """
    cfg = learning_config("flsl", "optim.warmup_epochs=0.25")
    run = tmp_path / "run"
    Trainer(cfg, run).fit(stop_at=60)
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(10, 61, 10))
    first, last = records[0], records[-1]
    uniform = math.log(cfg.params.out_dim)
    assert last["loss"] < first["loss"] - 0.3, (first["loss"], last["loss"])
    early_kmeans = max(r["kmeans_loss"] for r in records[:2])
    assert last["kmeans_loss"] < early_kmeans - 0.05, (early_kmeans, last["kmeans_loss"])
    assert last["kmeans_loss"] < uniform - 0.5
    for record in records[1:]:  # clusters in use: mean assignment near uniform, VMR near 0
        assert record["vmr"] < 0.12 and record["assignment_entropy"] > uniform - 0.12
        assert record["clusters_used"] >= 10
        assert record["teacher_entropy"] < uniform - 1.0  # sharp targets, not uniform
        assert 0.0 < record["meanshift_loss"] < 1.0 and record["patch_std"] > 1e-3
    logged = {"meanshift_weight", "sa_scale", "ca_scale", "teacher_temp", "lr", "momentum"}
    assert logged <= set(last)
