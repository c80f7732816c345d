"""Schedules against DINO's numpy cosine_scheduler formula, evaluated by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from densessl.ops.schedules import cosine, linear_warmup_constant, warmup_cosine


def _dino_cosine_scheduler(base, final, epochs, niter, warmup_epochs=0, start_warmup=0.0):
    """DINO's schedule restated from its definition (linspace warm-up, then cosine)."""
    warmup_iters = warmup_epochs * niter
    warm = np.linspace(start_warmup, base, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter - warmup_iters)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, sched))


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 100, 1.0, 0.0) == 1.0
    assert cosine(100, 100, 1.0, 0.0) == pytest.approx(0.0)
    assert cosine(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine(150, 100, 1.0, 0.0) == pytest.approx(0.0)


def test_warmup_cosine_matches_dino_after_warmup():
    total, warm = 200, 20
    ref = _dino_cosine_scheduler(5e-4, 1e-6, 10, 20, warmup_epochs=1)
    ours = [warmup_cosine(i, total, 5e-4, 1e-6, warm) for i in range(total)]
    # DINO's warm-up uses linspace (ends exactly at the peak at step warm-1); ours reaches
    # the peak at step `warm`. Both are linear; after warm-up they agree exactly.
    assert np.allclose(ours[warm:], ref[warm:], rtol=0, atol=1e-12)
    assert ours[0] == 0.0 and ours[warm // 2] == pytest.approx(5e-4 * 0.5)
    assert max(ours) == pytest.approx(5e-4)


def test_linear_warmup_constant_teacher_temp():
    values = [linear_warmup_constant(i, 30, 0.04, 0.07) for i in range(40)]
    assert values[0] == 0.04 and values[15] == pytest.approx(0.055)
    assert all(v == 0.07 for v in values[30:])
    assert linear_warmup_constant(5, 0, 0.04, 0.07) == 0.07


def test_momentum_cosine_monotone():
    vals = [cosine(i, 1000, 0.996, 1.0) for i in range(0, 1001, 100)]
    assert all(b >= a for a, b in itertools.pairwise(vals))
    assert math.isclose(vals[-1], 1.0)
