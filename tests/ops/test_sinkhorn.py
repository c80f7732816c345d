"""Sinkhorn-Knopp: marginals, official parity, column weights, distributed equivalence.

Pinned values come from the official Leopart code, MkuuWaUjinga/leopart @7835701
(``src/leopart.py`` ``Leopart.sinkhorn``), run once on CPU (torch 2.14) from a scratch folder
on the inputs of ``tests/methods/leopart_inputs.py``; its code is not part of this repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from densessl.ops.sinkhorn import sinkhorn_knopp
from helpers import TESTS

sys.path.insert(0, str(TESTS / "methods"))
import leopart_inputs

#: Official ``sinkhorn(exp(S/0.05).t(), 3)`` on the teacher scores of view 0: first row, Σ P².
PINNED_ROW0 = [
    0.00017885425768326968,
    2.6294962935935473e-06,
    0.07120555639266968,
    1.60852913211329e-08,
    0.9286112189292908,
    1.7171827266793116e-06,
]
PINNED_SUM_SQ = 26.106542587280273


def _cosine_scores(samples: int, prototypes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(samples, 16, generator=g), dim=1)
    c = F.normalize(torch.randn(prototypes, 16, generator=g), dim=1)
    return x @ c.t()


def test_marginals_are_uniform():
    """The plan Π = P / M has sample marginals 1/M (exactly, after the column step) and
    prototype marginals 1/K (at convergence; 3 iterations are already much closer than the
    softmax they start from: measured 34% vs >100% max relative error here)."""
    scores = _cosine_scores(600, 30)
    samples, prototypes = scores.shape
    plan = sinkhorn_knopp(scores, epsilon=0.05, iterations=50) / samples
    assert plan.shape == (samples, prototypes) and plan.dtype == torch.float32
    assert torch.allclose(plan.sum(dim=1), torch.full((samples,), 1 / samples), rtol=1e-5)
    assert torch.allclose(plan.sum(dim=0), torch.full((prototypes,), 1 / prototypes), rtol=1e-4)

    def prototype_error(p: torch.Tensor) -> float:
        return float((p.mean(dim=0) * prototypes - 1).abs().max())

    softmax = (scores / 0.05).softmax(dim=1)
    three = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert prototype_error(three) < 0.5 < prototype_error(softmax)
    assert torch.allclose(three.sum(dim=1), torch.ones(samples), atol=1e-5)


def test_matches_official_code():
    inputs = leopart_inputs.pinned_inputs()
    scores = inputs["teacher_scores"][0].permute(0, 2, 3, 1).reshape(-1, leopart_inputs.PROTOTYPES)
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(q[0], torch.tensor(PINNED_ROW0), rtol=1e-5, atol=1e-9)
    assert q.pow(2).sum().item() == pytest.approx(PINNED_SUM_SQ, rel=1e-6)


def test_zero_weight_columns_equal_leaving_them_out():
    scores = _cosine_scores(50, 7, seed=1)
    weights = torch.ones(50)
    weights[:20] = 0
    weighted = sinkhorn_knopp(scores, iterations=3, column_weights=weights)
    dropped = sinkhorn_knopp(scores[20:], iterations=3)
    assert torch.allclose(weighted[20:], dropped, atol=1e-6)
    assert weighted[:20].abs().max() == 0


def test_large_scores_do_not_overflow_and_shift_is_irrelevant():
    scores = _cosine_scores(40, 5, seed=2)
    base = sinkhorn_knopp(scores)
    shifted = sinkhorn_knopp(scores + 30.0)  # exp(30 / 0.05) would overflow float32
    assert torch.isfinite(shifted).all()
    assert torch.allclose(base, shifted, atol=1e-5)
    half = sinkhorn_knopp(scores.half())  # autocast inputs: computed in float32
    assert half.dtype == torch.float32 and torch.allclose(half, base, atol=2e-2)


def test_zero_iterations_is_the_column_softmax_and_arguments_are_checked():
    scores = _cosine_scores(12, 4, seed=3)
    assert torch.allclose(sinkhorn_knopp(scores, 0.1, 0), (scores / 0.1).softmax(dim=1), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        sinkhorn_knopp(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(scores, epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(scores, iterations=-1)
    with pytest.raises(ValueError, match="column_weights"):
        sinkhorn_knopp(scores, column_weights=torch.ones(5))


# ------------------------------------------------------------------------------ distributed
def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    scores = _cosine_scores(20, 6, seed=4)
    weights = torch.ones(20)
    weights[[0, 1, 15]] = 0  # a few queue-like rows that do not count
    return scores, weights


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        scores, weights = _inputs()
        rows = slice(0, 7) if rank == 0 else slice(7, 20)  # uneven: 7 and 13 samples
        plain = sinkhorn_knopp(scores[rows], 0.05, 3)
        weighted = sinkhorn_knopp(scores[rows], 0.05, 3, column_weights=weights[rows])
        torch.save({"plain": plain, "weighted": weighted}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    scores, weights = _inputs()
    single = sinkhorn_knopp(scores, 0.05, 3)
    single_weighted = sinkhorn_knopp(scores, 0.05, 3, column_weights=weights)
    assert torch.allclose(torch.cat([p["plain"] for p in parts]), single, atol=1e-6)
    assert torch.allclose(torch.cat([p["weighted"] for p in parts]), single_weighted, atol=1e-6)
    # Not trivially equal: each half alone gives other assignments.
    alone = sinkhorn_knopp(scores[:7], 0.05, 3)
    assert (alone - single[:7]).abs().max() > 1e-3
