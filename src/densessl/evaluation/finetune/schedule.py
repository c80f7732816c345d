"""The poly learning-rate schedule of mmcv (``PolyLrUpdaterHook`` + linear warm-up) and of
Segmenter (``segm/optim/scheduler.py`` ``PolynomialLR``, no warm-up): the two agree.

At iteration ``it`` (0-based, before its update)::

    regular = (lr - min_lr) * (1 - it / iterations) ** power + min_lr
    warm-up (it < warmup_iters): regular * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))
"""

from __future__ import annotations

__all__ = ["poly_lr"]


def poly_lr(
    it: int,
    iterations: int,
    lr: float,
    min_lr: float = 0.0,
    power: float = 1.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """The learning rate of iteration ``it`` (see the module docstring)."""
    progress = min(max(it, 0), iterations) / iterations
    regular = (lr - min_lr) * (1 - progress) ** power + min_lr
    if it < warmup_iters:
        k = (1 - it / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular
