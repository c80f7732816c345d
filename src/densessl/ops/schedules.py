"""Per-iteration schedules (learning rate, weight decay, teacher momentum, temperatures).

Each schedule is a pure function of the step, so resuming at step k gives exactly the value
an uninterrupted run had at step k; nothing is precomputed or stored in checkpoints.
"""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total_steps``), constant after."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    step: int,
    total_steps: int,
    peak: float,
    final: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then cosine.

    Matches DINO's ``cosine_scheduler`` evaluated at one iteration: warm-up value at step
    ``i < warmup_steps`` is ``warmup_start + (peak - warmup_start) * i / warmup_steps``; the
    cosine part spans the remaining ``total_steps - warmup_steps`` steps.
    """
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


def linear_warmup_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
