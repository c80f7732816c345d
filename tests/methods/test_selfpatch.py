"""SelfPatch: positive matching, class-attention aggregation, losses and centres, a tiny run.

Pinned values come from the official code, alinlab/SelfPatch @81aef149
(``selfpatch_vision_transformer.py`` ``SelfPatchHead``; ``main_selfpatch.py`` ``DINOLoss``),
run once on CPU (torch 2.14) on the fixed inputs built below; its code is not part of this
repository.
"""

from __future__ import annotations

import math

import pytest
import torch

from densessl.errors import ConfigError
from densessl.methods.base import StepInfo
from densessl.methods.selfpatch.aggregation import ClassAttentionHead, select_neighbours
from densessl.methods.selfpatch.method import SelfPatchLoss
from densessl.train.trainer import Trainer, read_metrics
from helpers import CPU, VIT_2X64, build_method, head_sizes, learning_config, random_crops, scenes

SMALL = [
    *scenes(64, 4),
    *CPU,
    *VIT_2X64,
    *head_sizes("selfpatch", 64, 64, 32),
    "selfpatch.patch_out_dim=32",
]
INFO = StepInfo(step=0, total_steps=10, steps_per_epoch=5)


def _method(*extra: str):
    return build_method("selfpatch", *SMALL, *extra)


# ----------------------------------------------------------------------- positive matching
#: Unit 2-d features at these angles (degrees) on a 4x4 grid: cos similarity = cos(Δangle).
ANGLES = [
    [10, 80, 30, 170],
    [50, 0, 20, 100],
    [120, 5, 60, 140],
    [90, 45, 160, 179],
]


def _angle_patches() -> torch.Tensor:
    rad = torch.tensor(ANGLES, dtype=torch.float64).deg2rad()
    return torch.stack([rad.cos(), rad.sin()], dim=-1).unsqueeze(0).float()  # [1, 4, 4, 2]


@pytest.mark.parametrize(
    ("border", "patch", "expected", "num_valid"),
    [
        # interior patch 5 (0°): neighbours 0,1,2,4,6,8,9,10 at 10,80,30,50,20,120,5,60°
        ("clip", 5, [9, 0, 6, 2], 4),
        ("wrap", 5, [9, 0, 6, 2], 4),
        # corner patch 0 (10°): inside the grid only 1 (80°), 4 (50°), 5 (0°)
        ("clip", 0, [5, 4, 1], 3),
        # ... on the torus also 3, 7, 12, 13, 15 (170, 100, 90, 45, 179°)
        ("wrap", 0, [5, 13, 4, 1], 4),
        # edge patch 1 (80°): 0, 2, 4, 5, 6 (10, 30, 50, 0, 20°)
        ("clip", 1, [4, 2, 6, 0], 4),
        # ... on the torus also 12, 13, 14 (90, 45, 160°) from the bottom row
        ("wrap", 1, [12, 4, 13, 2], 4),
    ],
)
def test_select_neighbours_hand_built(border, patch, expected, num_valid):
    selection = select_neighbours(_angle_patches(), k=4, border=border)
    assert selection.index.shape == selection.valid.shape == (1, 16, 4)
    assert selection.valid[0, patch].sum().item() == num_valid
    assert selection.index[0, patch, :num_valid].tolist() == expected
    assert not selection.valid[0, patch, num_valid:].any()
    angles = torch.tensor(ANGLES).flatten()
    for slot, j in enumerate(expected):
        cos = math.cos(math.radians(angles[patch] - angles[j]))
        assert selection.similarity[0, patch, slot].item() == pytest.approx(cos, abs=1e-6)


def test_select_neighbours_matches_brute_force_on_any_grid():
    patches = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0))
    height, width = 3, 5
    for border in ("clip", "wrap"):
        selection = select_neighbours(patches, k=3, border=border)
        x = torch.nn.functional.normalize(patches.reshape(2, 15, 8), dim=-1)
        for b in range(2):
            for i in range(15):
                r, c = divmod(i, width)
                candidates = set()
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if (dr, dc) == (0, 0):
                            continue
                        if border == "wrap":
                            candidates.add((rr % height) * width + cc % width)
                        elif 0 <= rr < height and 0 <= cc < width:
                            candidates.add(rr * width + cc)
                ranked = sorted(candidates, key=lambda j: -(x[b, i] @ x[b, j]).item())
                assert selection.index[b, i].tolist() == ranked[:3]
                assert selection.valid[b, i].all()


def test_select_neighbours_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3x3"):
        select_neighbours(torch.randn(1, 2, 4, 8), k=4)
    with pytest.raises(ValueError, match="between 1 and 8"):
        select_neighbours(torch.randn(1, 4, 4, 8), k=9)


# ----------------------------------------------------------------------- aggregation
def test_aggregation_shapes_and_masked_corner():
    torch.manual_seed(0)
    head = ClassAttentionHead(16, 2, num_neighbours=4, border="clip")
    patches = torch.randn(2, 4, 5, 16)
    student = head(patches, aggregate=False)
    teacher = head(patches, aggregate=True)
    assert student.image.shape == teacher.image.shape == (2, 16)
    assert student.tokens.shape == teacher.tokens.shape == (2, 20, 16)
    assert student.selection is None and teacher.selection.index.shape == (2, 20, 4)
    # Same image token on both paths; the student's tokens are its normalised patches.
    assert torch.allclose(student.image, teacher.image, atol=1e-6)
    assert torch.allclose(student.tokens, head.norm(patches.reshape(2, 20, 16)), atol=1e-6)
    # A corner has 3 candidates: its aggregate pools exactly those 3 (4th slot masked).
    with torch.no_grad():
        flat = patches.reshape(2, 20, 16)
        corner = teacher.selection.index[0, 0, :3]
        assert sorted(corner.tolist()) == [1, 5, 6]
        pooled = head.norm(head._run_blocks(flat[0, corner].unsqueeze(0)))
    assert torch.allclose(teacher.tokens[0, 0], pooled[0, 0], atol=1e-5)


def _pinned_head() -> tuple[ClassAttentionHead, torch.Tensor, torch.Tensor]:
    """Head (D=16, 2 heads, k=4, wrap) with seeded weights, input [2, 6, 6, 16], weights w."""
    gen = torch.Generator().manual_seed(0)
    head = ClassAttentionHead(16, 2, num_neighbours=4, border="wrap")
    with torch.no_grad():
        for _, param in sorted(head.state_dict().items()):  # same order as the official names
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    x = torch.randn(2, 36, 16, generator=gen)
    w = torch.randn(2, 37, 16, generator=gen)
    return head, x.reshape(2, 6, 6, 16), w


# Official SelfPatchHead(16, 2, 4)(x, loc) on the same weights and input: output [2, 37, 16].
PINNED_HEAD = {
    True: {
        "wsum": -53.127525329589844,
        "sq": 655.4190063476562,
        "tokens": [
            [0.9227139353752136, -0.8637802600860596, -0.9747063517570496, -0.4644063413143158],
            [0.9252142906188965, -0.8530186414718628, -1.0222034454345703, -0.4647255539894104],
            [0.9277575016021729, 0.08181136101484299, -0.8149043917655945, -0.4622915983200073],
            [0.9305861592292786, 0.37465453147888184, -1.071387767791748, -0.4619210660457611],
        ],
    },
    False: {
        "wsum": 9.435699462890625,
        "sq": 553.57080078125,
        "tokens": [
            [0.9016057252883911, 0.19736133515834808, -1.0143823623657227, -0.44847381114959717],
            [0.8974902629852295, -0.31561562418937683, 0.14680132269859314, -0.44785529375076294],
            [0.8910821080207825, -0.23432034254074097, 0.06991589814424515, -0.48456838726997375],
            [0.8691540360450745, 0.37504538893699646, -0.8388896584510803, -0.4591701030731201],
        ],
    },
}
PINNED_IMAGE = [0.928076982498169, -0.8312391638755798, -1.2151902914047241, -0.45287153124809265]


@pytest.mark.parametrize("aggregate", [True, False])
def test_aggregation_matches_official_code(aggregate):
    head, x, w = _pinned_head()
    with torch.no_grad():
        out = head(x, aggregate)
    full = torch.cat([out.image.unsqueeze(1), out.tokens], dim=1)  # official layout
    pinned = PINNED_HEAD[aggregate]
    assert (full * w).sum().item() == pytest.approx(pinned["wsum"], abs=1e-3)
    assert full.pow(2).sum().item() == pytest.approx(pinned["sq"], rel=1e-5)
    assert torch.allclose(full[1, 1:5, :4], torch.tensor(pinned["tokens"]), atol=1e-5)
    assert torch.allclose(full[0, 0, :4], torch.tensor(PINNED_IMAGE), atol=1e-5)


# ----------------------------------------------------------------------- losses and centres
# Official DINOLoss(16, 8, ncrops=4, 0.04, 0.04, 0, 1) with the centres and logits below.
PINNED_LOSS = {"total": 20.396108627319336, "image": 18.90865135192871, "patch": 14.874576568603516}
PINNED_CENTER = [-0.684958815574646, -0.3613547384738922, -0.25284671783447266, -0.7696756720542908]
PINNED_CENTER_SUM = -3.1265039  # of all 16 entries
PINNED_PATCH_CENTER = [
    -0.46100789308547974, -0.23121970891952515, -0.38436681032180786, -0.009867291897535324,
    -0.09830597043037415, -0.42782291769981384, 0.18462254106998444, 0.10067009925842285,
]  # fmt: skip


def test_loss_and_centres_match_official_code():
    gen = torch.Generator().manual_seed(1)
    batch, k, kp = 3, 16, 8
    loss = SelfPatchLoss(k, kp, num_global=2, patch_loss_weight=0.1, image_center_views="all")
    with torch.no_grad():
        loss.image_loss.center.copy_(torch.randn(1, 1, k, generator=gen).reshape(1, k) * 0.5)
        loss.patch_loss.center.copy_(torch.randn(1, kp, generator=gen) * 0.5)

    def views(tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        image = torch.randn(2 * batch, 1, k, generator=gen)
        patch = torch.randn(2 * batch, tokens, kp, generator=gen)
        return list(image.squeeze(1).chunk(2)), list(patch.chunk(2))

    t_global, t_local = views(9), views(4)
    s_global, s_local = views(9), views(4)
    terms = loss(
        s_global[0] + s_local[0],
        s_global[1] + s_local[1],
        t_global[0] + t_local[0],
        t_global[1] + t_local[1],
        teacher_temp=0.04,
    )
    assert terms["loss"].item() == pytest.approx(PINNED_LOSS["total"], rel=1e-5)
    assert terms["image_loss"].item() == pytest.approx(PINNED_LOSS["image"], rel=1e-5)
    assert terms["patch_loss"].item() == pytest.approx(PINNED_LOSS["patch"], rel=1e-5)
    loss.update_centers(t_global[0] + t_local[0], t_global[1] + t_local[1])
    center = loss.image_loss.center.flatten()
    assert torch.allclose(center[:4], torch.tensor(PINNED_CENTER), atol=1e-6)
    assert center.sum().item() == pytest.approx(PINNED_CENTER_SUM, abs=1e-5)
    patch_center = loss.patch_loss.center.flatten()
    assert torch.allclose(patch_center, torch.tensor(PINNED_PATCH_CENTER), atol=1e-6)


def test_image_centre_global_views_only():
    gen = torch.Generator().manual_seed(0)
    loss = SelfPatchLoss(6, 4, num_global=2, image_center_views="global")
    images = [torch.randn(3, 6, generator=gen) for _ in range(4)]
    patches = [torch.randn(3, 5, 4, generator=gen) for _ in range(4)]
    loss.update_centers(images, patches)
    expected = 0.1 * torch.cat(images[:2]).mean(0, keepdim=True)
    assert torch.allclose(loss.image_loss.center, expected, atol=1e-6)
    all_tokens = torch.cat([p.reshape(-1, 4) for p in patches])
    assert torch.allclose(loss.patch_loss.center, 0.1 * all_tokens.mean(0, keepdim=True))


# ----------------------------------------------------------------------- the method
def test_teacher_copy_and_architecture():
    method, _ = _method()
    student = dict(method.student.named_parameters())
    for name, param in method.teacher.named_parameters():
        assert torch.equal(student[name], param) and not param.requires_grad
    assert type(method.teacher) is type(method.student)
    backbone = method.teacher_backbone()
    assert not backbone.has_cls_token and isinstance(backbone.model.norm, torch.nn.Identity)
    assert sum("last_layer" in n for n in student) == 4  # two heads, both frozen in epoch 0


def test_loss_shapes_finite_and_gradients(single_thread):
    method, cfg = _method()
    crops = random_crops(cfg)
    with torch.no_grad():
        teacher = method.teacher.forward_views(crops, aggregate=True)
    assert [t.shape for t in teacher.image] == [(3, 64)] * 4
    assert [t.shape for t in teacher.patch] == [(3, 64, 32)] * 2 + [(3, 16, 32)] * 2
    assert teacher.first_selection.index.shape == (6, 64, 4)

    # Gradient of the patch term reaches the student's backbone patch tokens.
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["tokens"] = output

    handle = method.student.backbone.model.blocks[-1].register_forward_hook(keep)
    out = method.loss({"crops": crops}, INFO)
    handle.remove()
    assert {"loss", "image_loss", "patch_loss", "patch_teacher_entropy", "positive_cos"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    total = out["image_loss"] + method.params.patch_loss_weight * out["patch_loss"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert out["positive_cos"] >= out["neighbour_cos"]
    method.zero_grad()
    out["loss"].backward()
    tokens = captured["tokens"]
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student.head.patch_head.mlp[0].weight.grad.abs().sum() > 0
    assert method.student.head.aggregation.cls_token.grad.abs().sum() > 0


def test_patch_loss_alone_skips_the_class_attention(single_thread):
    """The student's patch predictions come from its own patches: only the image loss trains
    the class-attention blocks (as in the official code)."""
    method, cfg = _method("selfpatch.patch_loss_weight=0")
    crops = random_crops(cfg)
    with torch.no_grad():
        teacher = method.teacher.forward_views(crops, aggregate=True)
    student = method.student.forward_views(crops)
    patch = method.selfpatch_loss.patch_loss(
        student.patch, teacher.patch, 0.04, same_view_only=True
    )
    patch.backward()
    for param in method.student.head.aggregation.cls_blocks.parameters():
        assert param.grad is None or not param.grad.any()
    assert not method.student.head.aggregation.cls_token.grad.any()
    assert method.student.backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_patch_centre_follows_all_teacher_tokens(single_thread):
    method, cfg = _method()
    crops = random_crops(cfg)
    with torch.no_grad():
        teacher = method.teacher.forward_views(crops, aggregate=True)
    method.loss({"crops": crops}, INFO)
    tokens = torch.cat([t.reshape(-1, 32) for t in teacher.patch])  # 2x64 + 2x16 per image
    expected_patch = 0.1 * tokens.mean(0, keepdim=True)  # centre starts at 0, momentum 0.9
    expected_image = 0.1 * torch.cat(teacher.image).mean(0, keepdim=True)  # all 4 views
    assert torch.allclose(method.selfpatch_loss.patch_loss.center, expected_patch, atol=1e-6)
    assert torch.allclose(method.selfpatch_loss.image_loss.center, expected_image, atol=1e-6)


def test_teacher_views_global_option(single_thread):
    method, cfg = _method("selfpatch.teacher_views=global", "selfpatch.image_center_views=global")
    crops = random_crops(cfg)
    seen = []
    embed = method.teacher.backbone.model.patch_embed
    handle = embed.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    out = method.loss({"crops": crops}, INFO)
    handle.remove()
    assert [x.shape[-1] for x in seen] == [cfg.views.global_size]  # locals skip the teacher
    assert torch.isfinite(out["loss"])


def test_backbone_and_grid_requirements():
    with pytest.raises(ValueError, match="cls_token=false"):
        _method("backbone.cls_token=true")
    with pytest.raises(ValueError, match="3x3"):
        _method("views.local_size=16")  # 2x2 tokens at patch 8
    _method("views.local_size=16", "selfpatch.teacher_views=global")  # locals skip the search
    with pytest.raises(ConfigError, match=r"selfpatch\.border"):
        _method("selfpatch.border=reflect")
    with pytest.raises(ConfigError, match=r"selfpatch\.out_dim"):
        _method("selfpatch.out_dim=1")


def test_tiny_preset_learns_on_scenes_and_evaluates(tmp_path, single_thread):
    """The first 70 steps of the tiny recipe (its 600-step schedules): the loss falls, neither
    level collapses, and the teacher backbone (no CLS token) evaluates like any other, from
    the run directory and exported.

    Measured on 2 shared CPU cores (1 thread, batch 16, 0.3-0.45 s/step): loss 6.61 over
    steps 1-10, 6.79 over 11-20 (DINO's early rise), 6.33 over 61-70; patch loss 5.47 → 4.71;
    teacher entropy 4.85 (image, ln K = 6.93) and 4.27 (patch, ln Kp = 5.55) at the end.
    """
    import densessl

    cfg = learning_config("selfpatch", "optim.warmup_epochs=0.25")
    run = tmp_path / "run"
    Trainer(cfg, run).fit(stop_at=70)
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(10, 71, 10))
    first, peak, last = records[0], max(r["loss"] for r in records[:3]), records[-1]
    assert last["loss"] < first["loss"] - 0.15, (first["loss"], last["loss"])
    assert last["loss"] < peak - 0.3, (peak, last["loss"])
    assert last["patch_loss"] < first["patch_loss"] - 0.4, (first["patch_loss"], last["patch_loss"])
    for prefix, dim in (("", cfg.params.out_dim), ("patch_", cfg.params.patch_out_dim)):
        uniform = math.log(dim)
        assert last[f"{prefix}teacher_batch_entropy"] > 0.5 * uniform  # many prototypes used
        assert last[f"{prefix}teacher_entropy"] < uniform - 0.5  # sharp, not uniform
    assert last["patch_std"] > 1e-3 and last["positive_cos"] > last["neighbour_cos"]

    record = densessl.evaluate(
        "cluster", backbone=run, data={"num_images": 20}, seeds=[0], n_init=1, iters=10,
        num_clusters=["C"], verbose=False, progress=False,
    )  # fmt: skip
    assert record["backbone"]["method"] == "selfpatch"
    assert 0.0 <= record["summary"][0]["miou"] <= 1.0
    from densessl import export

    folder = export.export_backbone(run, tmp_path / "export")
    features = export.load_export(folder)
    assert not features.has_cls_token
    again = densessl.evaluate(
        "cluster", backbone=folder, data={"num_images": 20}, seeds=[0], n_init=1, iters=10,
        num_clusters=["C"], verbose=False, progress=False,
    )  # fmt: skip
    assert again["summary"][0]["miou"] == pytest.approx(record["summary"][0]["miou"], abs=1e-6)
