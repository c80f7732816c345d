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


#: facebookresearch/dino @7c446df ``utils.cosine_scheduler(5e-4, 1e-6, epochs=10,
#: niter_per_ep=20, warmup_epochs=1)`` at steps 0, 5, 10, 19, 20, 21, 199 (run once, numpy 2.4.6).
OFFICIAL_DINO = [0.0, 0.00013157894736842105, 0.0002631578947368421, 0.0005, 0.0005,
                 0.0004999619999415196, 1.0380000584803783e-06]  # fmt: skip


def test_warmup_cosine_dino_rule_equals_the_official_schedule():
    total, warm = 200, 20
    ours = [warmup_cosine(i, total, 5e-4, 1e-6, warm) for i in range(total)]
    steps = (0, 5, 10, 19, 20, 21, 199)
    assert [ours[i] for i in steps] == pytest.approx(OFFICIAL_DINO, rel=1e-12, abs=1e-18)
    ref = _dino_cosine_scheduler(5e-4, 1e-6, 10, 20, warmup_epochs=1)
    assert np.allclose(ours, ref, rtol=0, atol=1e-12)  # every step, warm-up included
    assert ours[warm - 1] == ours[warm] == 5e-4  # the peak is held for two steps


def test_warmup_cosine_linear_rule_peaks_one_step_later():
    total, warm = 200, 20
    ours = [warmup_cosine(i, total, 5e-4, 1e-6, warm, rule="linear") for i in range(total)]
    assert ours[0] == 0.0 and ours[warm // 2] == pytest.approx(5e-4 * 0.5)
    assert ours[warm - 1] < ours[warm] == 5e-4
    dino = [warmup_cosine(i, total, 5e-4, 1e-6, warm) for i in range(total)]
    assert ours[warm:] == dino[warm:]
    assert warmup_cosine(0, 10, 1.0, 0.0, 1) == 0.0  # a 1-step warm-up is its start value
    with pytest.raises(ValueError, match="warm-up rule"):
        warmup_cosine(0, 10, 1.0, 0.0, 2, rule="cosine")


def test_linear_warmup_constant_teacher_temp():
    values = [linear_warmup_constant(i, 30, 0.04, 0.07) for i in range(40)]
    assert values[0] == 0.04 and values[15] == pytest.approx(0.055)
    assert all(v == 0.07 for v in values[30:])
    assert linear_warmup_constant(5, 0, 0.04, 0.07) == 0.07


def test_momentum_cosine_monotone():
    vals = [cosine(i, 1000, 0.996, 1.0) for i in range(0, 1001, 100)]
    assert all(b >= a for a, b in itertools.pairwise(vals))
    assert math.isclose(vals[-1], 1.0)
