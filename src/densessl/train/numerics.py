"""Numerical guards of the training step: per-parameter gradient clipping and NaN/inf errors.

The trainer clips every gradient tensor on its own (the official DINO ``clip_gradients``)
and reuses the norms it computed to detect non-finite gradients, so the check costs no
second pass. Errors name the step, the offending loss terms or parameters, where the last
good checkpoint is, and what to try.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "NonFiniteLossError",
    "clip_gradients_per_parameter",
    "nonfinite_gradient_error",
    "nonfinite_loss_error",
]


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/inf; the message names the step and the loss terms
    (or the parameters whose gradients are non-finite)."""


def clip_gradients_per_parameter(
    parameters: list[torch.nn.Parameter], max_norm: float
) -> list[torch.Tensor]:
    """Rescale each gradient tensor to norm <= ``max_norm`` on its own (official DINO clip).

    Returns the norms before clipping (one 0-d tensor per parameter that has a gradient), so
    callers can check them for NaN/inf without a second pass.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return []
    norms = list(torch._foreach_norm(grads))
    if max_norm > 0:
        scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
        torch._foreach_mul_(grads, scales)
    return norms


def nonfinite_loss_error(
    step: int, terms: dict[str, torch.Tensor], checkpoint: Path
) -> NonFiniteLossError:
    """The error for a NaN/inf loss, naming the non-finite scalar terms of ``terms``."""
    bad = [k for k, v in terms.items() if v.dim() == 0 and not bool(torch.isfinite(v))]
    return NonFiniteLossError(
        f"non-finite loss at step {step} (terms: {', '.join(bad) or 'loss'}); "
        f"the last good checkpoint is kept at {checkpoint}. Try a lower "
        "optim.lr, precision=fp32, or a larger teacher temperature."
    )


def nonfinite_gradient_error(
    step: int,
    norms: dict[str, torch.Tensor] | None,
    terms: dict[str, torch.Tensor] | None,
    checkpoint: Path,
) -> NonFiniteLossError:
    """The error for NaN/inf gradients under a finite loss.

    Args:
        norms: gradient norm per parameter name (``None`` when only a device-side flag
            recorded the step, as on GPUs).
        terms: the step's loss terms (``None`` when no longer available).
    """
    where = ""
    if norms is not None:
        bad = [name for name, norm in norms.items() if not bool(norm.isfinite())]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        where = f" in {', '.join(bad[:5])}{more}"
    finite = ""
    if terms is not None:
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items() if v.dim() == 0)
        finite = f" (loss terms were finite: {values})"
    return NonFiniteLossError(
        f"non-finite gradients at step {step}{where}{finite}; the last good checkpoint "
        f"is kept at {checkpoint}. Try a lower optim.lr, optim.clip_grad > 0, or precision=fp32."
    )
