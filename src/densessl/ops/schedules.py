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


WARMUP_RULES = ("dino", "linear")


def warmup_cosine(
    step: int,
    total_steps: int,
    peak: float,
    final: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    rule: str = "dino",
) -> float:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then cosine.

    The cosine part spans the remaining ``total_steps - warmup_steps`` steps and starts at
    ``peak``. The warm-up value at step ``i < W`` (``W = warmup_steps``):

    * ``rule="dino"``: ``start + (peak - start) * i / (W - 1)``, DINO's ``cosine_scheduler``
      (facebookresearch/dino ``utils.py``: ``np.linspace(start, peak, W)``; also SelfPatch's
      and FLSL's copies): the peak is reached at step ``W - 1`` and held at step ``W``;
    * ``rule="linear"``: ``start + (peak - start) * i / W``, optax/scenic's linear warm-up
      (LOCA's official schedule): the peak is reached at step ``W``.
    """
    if rule not in WARMUP_RULES:
        raise ValueError(f"warm-up rule must be one of {WARMUP_RULES}, got {rule!r}")
    if step < warmup_steps:
        span = warmup_steps - 1 if rule == "dino" else warmup_steps
        if span <= 0:  # a 1-step linspace is its start value
            return warmup_start
        return warmup_start + (peak - warmup_start) * step / span
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


def linear_warmup_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def poly_lr(
    it: int,
    iterations: int,
    lr: float,
    min_lr: float = 0.0,
    power: float = 1.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """mmcv's poly schedule (``PolyLrUpdaterHook`` with linear warm-up), also Segmenter's
    ``PolynomialLR`` without warm-up, at iteration ``it`` (0-based, before its update)::

        regular = (lr - min_lr) * (1 - it / iterations) ** power + min_lr
        warm-up (it < warmup_iters): regular * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))
    """
    progress = min(max(it, 0), iterations) / iterations
    regular = (lr - min_lr) * (1 - progress) ** power + min_lr
    if it < warmup_iters:
        k = (1 - it / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular

