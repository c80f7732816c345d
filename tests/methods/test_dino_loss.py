"""DINOLoss (densessl.methods.dino.loss) and the densessl.ops.distributed helpers it uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from densessl.methods.dino.loss import DINOLoss, view_pairs
from densessl.ops import distributed


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_loss(
    students: list[torch.Tensor],
    teachers: list[torch.Tensor],
    center: torch.Tensor,
    temp_t: float,
    temp_s: float,
    pairs: list[tuple[int, int]],
) -> torch.Tensor:
    """Naive, independent transcription of the formula (explicit loops, float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for g, v in pairs:
        p = torch.softmax((teachers[g].double() - center.double()) / temp_t, dim=-1)
        log_q = torch.log_softmax(students[v].double() / temp_s, dim=-1)
        total += (-(p * log_q).sum(-1)).mean()
    return total / len(pairs)


# ------------------------------------------------------------------------------------ parity
# Values computed once with the official DINOLoss of facebookresearch/dino @ 7c446df5
# (main_dino.py, class DINOLoss; run from /tmp with a single-process gloo group because it
# calls dist.all_reduce unconditionally). Official arguments: out_dim=64, ncrops=6,
# warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=10,
# student_temp=0.1, center_momentum=0.9, called as loss(student, teacher, epoch=1)
# (τt = linspace(0.04, 0.07, 3)[1] = 0.055) twice on the same inputs; the second call sees
# the centre updated by the first. Inputs are produced by _parity_inputs() below:
# student = cat of 6 views [24, 64], teacher = cat of 2 global views [8, 64].
OFFICIAL_LOSS_1 = 24.121631622314453
OFFICIAL_LOSS_2 = 23.967939376831055
OFFICIAL_CENTER_FIRST4 = [
    -0.08532658964395523,
    -0.13287986814975739,
    -0.03464705869555473,
    -0.05355774611234665,
]
OFFICIAL_CENTER_SUM = -0.9040583968162537
OFFICIAL_CENTER_ABS_SUM = 3.349724769592285


def _parity_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6 * 4, 64, generator=g)  # 2 global + 4 local views, B = 4
    teacher = torch.randn(2 * 4, 64, generator=g)  # 2 global views
    return student, teacher


def test_parity_with_official_dino_loss() -> None:
    student, teacher = _parity_inputs()
    loss_fn = DINOLoss(64, student_temp=0.1, center_momentum=0.9)
    temp = [0.04, 0.055, 0.07][1]
    losses = []
    for _ in range(2):
        losses.append(loss_fn(student.chunk(6), teacher.chunk(2), temp))
        loss_fn.update_center(teacher.chunk(2))
    assert losses[0].item() == pytest.approx(OFFICIAL_LOSS_1, rel=1e-6)
    assert losses[1].item() == pytest.approx(OFFICIAL_LOSS_2, rel=1e-6)
    center = loss_fn.center
    assert center.shape == (1, 64)
    assert center[0, :4].tolist() == pytest.approx(OFFICIAL_CENTER_FIRST4, rel=1e-6, abs=1e-7)
    assert center.sum().item() == pytest.approx(OFFICIAL_CENTER_SUM, rel=1e-5, abs=1e-6)
    assert center.abs().sum().item() == pytest.approx(OFFICIAL_CENTER_ABS_SUM, rel=1e-6)


# ------------------------------------------------------------------------------- the formula
def test_view_pairs() -> None:
    assert len(view_pairs(2, 10)) == 18  # DINO: 2 x 9
    assert view_pairs(2, 3) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert view_pairs(2, 3, skip_same_view=False)[:3] == [(0, 0), (0, 1), (0, 2)]
    assert view_pairs(3, 3, same_view_only=True) == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize("skip_same_view", [True, False])
def test_matches_naive_reference_with_nonzero_center(skip_same_view: bool) -> None:
    g = _gen(3)
    students = [torch.randn(5, 32, generator=g) * 3 for _ in range(5)]
    teachers = [torch.randn(5, 32, generator=g) * 3 for _ in range(2)]
    loss_fn = DINOLoss(32, student_temp=0.2)
    loss_fn.center.copy_(torch.randn(1, 32, generator=g))
    loss = loss_fn(students, teachers, 0.05, skip_same_view=skip_same_view)
    pairs = view_pairs(2, 5, skip_same_view)
    expected = _reference_loss(students, teachers, loss_fn.center, 0.05, 0.2, pairs)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_with_itself_is_the_entropy() -> None:
    # Spec §6.3(c): identical student and teacher logits, one view, τs = τt, zero centre.
    # Then P_s = P_t = p and the loss is −Σ p log p = H(p), exactly the teacher entropy.
    logits = torch.randn(16, 50, generator=_gen()) * 4
    loss_fn = DINOLoss(50, student_temp=0.07)
    loss = loss_fn([logits], [logits], 0.07, skip_same_view=False)
    p = torch.softmax(logits.double() / 0.07, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(loss.double(), entropy, rtol=1e-5, atol=1e-6)
    diag = loss_fn.diagnostics([logits], 0.07)
    torch.testing.assert_close(loss, diag["teacher_entropy"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no \\(teacher, student\\) view pair"):
        loss_fn([logits], [logits], 0.07)  # skip_same_view=True leaves no pair


def test_cross_entropy_is_entropy_plus_kl() -> None:
    # General identity: CE(P_t, P_s) = H(P_t) + KL(P_t || P_s) >= H(P_t).
    g = _gen(1)
    s, t = torch.randn(8, 20, generator=g), torch.randn(8, 20, generator=g)
    loss_fn = DINOLoss(20, student_temp=0.1)
    loss = loss_fn([t, s], [t], 0.04)  # single pair (0, 1)
    log_pt = torch.log_softmax(t.double() / 0.04, -1)
    log_ps = torch.log_softmax(s.double() / 0.1, -1)
    pt = log_pt.exp()
    h = -(pt * log_pt).sum(-1)
    kl = (pt * (log_pt - log_ps)).sum(-1)
    torch.testing.assert_close(loss.double(), (h + kl).mean(), rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_student_only() -> None:
    g = _gen(2)
    students = [torch.randn(4, 16, generator=g, requires_grad=True) for _ in range(3)]
    teachers = [torch.randn(4, 16, generator=g, requires_grad=True) for _ in range(2)]
    DINOLoss(16)(students, teachers, 0.04).backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in students)
    assert all(t.grad is None for t in teachers)


def test_low_precision_logits_are_computed_in_float32() -> None:
    g = _gen(4)
    students = [torch.randn(4, 16, generator=g).bfloat16() for _ in range(3)]
    teachers = [torch.randn(4, 16, generator=g).bfloat16() for _ in range(2)]
    loss_fn = DINOLoss(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(students, teachers, 0.04)
    assert loss.dtype == torch.float32
    expected = loss_fn([s.float() for s in students], [t.float() for t in teachers], 0.04)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------- patch-level logits
def test_patch_logits_same_view_only_with_different_token_counts() -> None:
    # SelfPatch's patch loss: every view, same view only, mean over batch and tokens,
    # then over views; global views have 9 tokens here and local ones 4.
    g = _gen(5)
    shapes = [(3, 9, 12), (3, 9, 12), (3, 4, 12)]
    students = [torch.randn(*s, generator=g) for s in shapes]
    teachers = [torch.randn(*s, generator=g) for s in shapes]
    loss_fn = DINOLoss(12)
    loss_fn.center.copy_(torch.randn(1, 12, generator=g))
    loss = loss_fn(students, teachers, 0.04, same_view_only=True)
    expected = _reference_loss(
        students, teachers, loss_fn.center, 0.04, 0.1, view_pairs(3, 3, True, True)
    )
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(students, teachers, 0.04)  # cross-view pairs of [3,9,K] vs [3,4,K]


def test_patch_center_is_mean_over_batch_and_tokens() -> None:
    g = _gen(6)
    views = [torch.randn(2, 9, 8, generator=g), torch.randn(5, 4, 8, generator=g)]
    loss_fn = DINOLoss(8, center_momentum=0.9)
    loss_fn.update_center(views)
    rows = torch.cat([v.reshape(-1, 8) for v in views])  # 18 + 20 token rows
    torch.testing.assert_close(loss_fn.center, 0.1 * rows.mean(0, keepdim=True))


# ----------------------------------------------------------------------------------- centre
def test_center_update_math() -> None:
    g = _gen(7)
    a, b = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    loss_fn = DINOLoss(10, center_momentum=0.8)
    loss_fn.update_center([a, b])
    mean1 = torch.cat([a, b]).mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, 0.2 * mean1)
    loss_fn.update_center(a)  # a single tensor is one view
    torch.testing.assert_close(loss_fn.center, 0.8 * 0.2 * mean1 + 0.2 * a.mean(0, keepdim=True))
    zero_m = DINOLoss(10, center_momentum=0.0)
    zero_m.update_center([a])
    torch.testing.assert_close(zero_m.center, a.mean(0, keepdim=True))
    assert "center" in loss_fn.state_dict()


def test_center_update_without_rows_is_a_no_op() -> None:
    loss_fn = DINOLoss(6)
    loss_fn.center.fill_(2.0)
    loss_fn.update_center([torch.zeros(0, 6)])
    torch.testing.assert_close(loss_fn.center, torch.full((1, 6), 2.0))


# ------------------------------------------------------------------------------ diagnostics
def test_diagnostics_on_uniform_collapse() -> None:
    k = 37
    teachers = [torch.full((6, k), 0.3, requires_grad=True), torch.full((6, k), 0.3)]
    diag = DINOLoss(k).diagnostics(teachers, 0.04)
    assert set(diag) == {
        "teacher_entropy",
        "teacher_batch_entropy",
        "teacher_mutual_info",
        "kl_to_center",
    }
    for value in diag.values():
        assert value.dim() == 0 and value.dtype == torch.float32 and not value.requires_grad
    assert diag["teacher_entropy"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert diag["teacher_batch_entropy"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert diag["teacher_mutual_info"].item() == pytest.approx(0.0, abs=1e-5)
    assert diag["kl_to_center"].item() == pytest.approx(0.0, abs=1e-5)


def test_diagnostics_on_one_prototype_collapse_and_on_healthy_teacher() -> None:
    k = 16
    collapsed = torch.zeros(8, k)
    collapsed[:, 3] = 10.0  # every sample picks prototype 3
    diag = DINOLoss(k).diagnostics([collapsed], 0.04)
    assert diag["teacher_entropy"].item() < 1e-3
    assert diag["teacher_batch_entropy"].item() < 1e-3
    healthy = torch.eye(k) * 10.0  # sample i picks prototype i
    diag = DINOLoss(k).diagnostics([healthy], 0.04)
    assert diag["teacher_entropy"].item() < 1e-3
    assert diag["teacher_batch_entropy"].item() == pytest.approx(math.log(k), rel=1e-4)
    assert diag["teacher_mutual_info"].item() == pytest.approx(math.log(k), rel=1e-4)


def test_diagnostics_kl_to_center_definition() -> None:
    g = _gen(8)
    t = torch.randn(5, 3, 12, generator=g)  # patch logits
    loss_fn = DINOLoss(12)
    loss_fn.center.copy_(torch.randn(1, 12, generator=g))
    diag = loss_fn.diagnostics(t, 0.1)
    rows = t.reshape(-1, 12).double()
    log_p = torch.log_softmax((rows - loss_fn.center.double()) / 0.1, -1)
    log_q = torch.log_softmax(loss_fn.center.double() / 0.1, -1)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    torch.testing.assert_close(diag["kl_to_center"].double(), expected, rtol=1e-5, atol=1e-6)
    p_mean = log_p.exp().mean(0)
    torch.testing.assert_close(
        diag["teacher_batch_entropy"].double(), -(p_mean * p_mean.log()).sum(), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------------- validation
def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(8, student_temp=0.0)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(8, center_momentum=1.0)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(8, center_momentum=-0.1)
    with pytest.raises(ValueError, match="out_dim"):
        DINOLoss(0)
    loss_fn = DINOLoss(8)
    x = [torch.randn(2, 8), torch.randn(2, 8)]
    with pytest.raises(ValueError, match="teacher_temp"):
        loss_fn(x, x, 0.0)
    with pytest.raises(ValueError, match="teacher_temp"):
        loss_fn.diagnostics(x, -1.0)
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        loss_fn([torch.randn(2, 7)] * 2, x, 0.04)
    with pytest.raises(ValueError, match="3 teacher views but only 2"):
        loss_fn(x, [*x, x[0]], 0.04)
    with pytest.raises(ValueError, match="at least one view"):
        loss_fn.update_center([])


# ------------------------------------------------------------------------------ distributed
def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        image, patch = _distributed_inputs()
        rows = slice(0, 3) if rank == 0 else slice(3, 8)  # uneven: 3 and 5 samples
        img_loss = DINOLoss(16, center_momentum=0.9)
        img_loss.update_center([v[rows] for v in image])
        patch_loss = DINOLoss(16, center_momentum=0.9)
        patch_loss.update_center([v[rows] for v in patch])
        summed = distributed.all_reduce_sum(torch.tensor([float(rank + 1)]))
        averaged = distributed.all_reduce_mean(torch.tensor([float(rank + 1)]))
        info = torch.tensor(
            [distributed.world_size(), distributed.rank(), float(distributed.is_distributed())]
        )
        torch.save(
            {
                "img": img_loss.center,
                "patch": patch_loss.center,
                "sum": summed,
                "mean": averaged,
                "info": info,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def _distributed_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    image = [torch.randn(8, 16, generator=g) for _ in range(2)]
    patch = [torch.randn(8, 9, 16, generator=g), torch.randn(8, 4, 16, generator=g)]
    return image, patch


def test_helpers_without_process_group() -> None:
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process()
    x = torch.tensor([2.0, 3.0])
    assert distributed.all_reduce_sum(x) is x and x.tolist() == [2.0, 3.0]
    assert distributed.all_reduce_mean(x) is x and x.tolist() == [2.0, 3.0]
    with pytest.raises(TypeError):
        distributed.all_reduce_mean(torch.tensor([1, 2]))


def test_two_processes_with_half_batches_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(
        _distributed_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    image, patch = _distributed_inputs()
    img_loss, patch_loss = DINOLoss(16), DINOLoss(16)
    img_loss.update_center(image)
    patch_loss.update_center(patch)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["img"], img_loss.center)
        torch.testing.assert_close(result["patch"], patch_loss.center)
        assert result["sum"].tolist() == [3.0]
        assert result["mean"].tolist() == [1.5]
        assert result["info"].tolist() == [2.0, float(rank), 1.0]
    # sanity: the naive mean of per-process means would differ for uneven batches
    local_means = [torch.cat([v[r] for v in image]).mean(0) for r in (slice(0, 3), slice(3, 8))]
    naive = 0.1 * (local_means[0] + local_means[1]) / 2
    assert not torch.allclose(naive, img_loss.center[0])
    assert F.mse_loss(img_loss.center[0], 0.1 * torch.cat(image).mean(0)).item() < 1e-12
