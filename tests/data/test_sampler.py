"""ResumableSampler: exact resume and exact splitting across processes."""

from __future__ import annotations

from densessl.data.sampler import ResumableSampler


def _indices(sampler: ResumableSampler) -> list[int]:
    return [index for _, index in sampler]


def test_epoch_is_a_permutation_prefix_and_changes_per_epoch():
    s = ResumableSampler(10, global_batch=4, seed=1)
    s.set_epoch(0)
    e0 = _indices(s)
    assert len(e0) == 8 == len(s) and len(set(e0)) == 8
    s.set_epoch(1)
    assert _indices(s) != e0
    assert all(epoch == 1 for epoch, _ in s)


def test_resume_skips_consumed_batches():
    s = ResumableSampler(20, global_batch=4, seed=0)
    s.set_epoch(3)
    full = _indices(s)
    s.set_epoch(3, start_batch=2)
    assert _indices(s) == full[8:] and len(s) == 12


def test_two_ranks_cover_exactly_the_global_batches():
    single = ResumableSampler(24, global_batch=8, seed=5)
    single.set_epoch(2)
    full = _indices(single)
    ranks = [ResumableSampler(24, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    parts = []
    for r in ranks:
        r.set_epoch(2)
        parts.append(_indices(r))
    for b in range(3):
        merged = parts[0][4 * b : 4 * b + 4] + parts[1][4 * b : 4 * b + 4]
        assert sorted(merged) == sorted(full[8 * b : 8 * b + 8])
