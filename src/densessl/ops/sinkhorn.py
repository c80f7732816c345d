"""Sinkhorn-Knopp: balanced soft assignments of samples to prototypes (distributed-aware).

SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020) and Leopart (Ziegler & Asano, "Self-Supervised Learning of Object
Parts for Semantic Segmentation", CVPR 2022) turn prototype scores into targets that use every
prototype equally. With scores ``S`` ``[M, K]`` (M samples, K prototypes) and ε:

    Q = exp(S / ε)ᵀ                 [K, M]      Q /= Σ Q
    repeat ``iterations`` times:
        Q_k· *= (1/K) / Σ_j Q_kj     every prototype carries mass 1/K
        Q_·j *= c_j   / Σ_k Q_kj     every sample carries mass c_j (1/M when unweighted)
    P = (Q / Σ_k Q_kj)ᵀ             [M, K]      each sample's assignment sums to 1

Smaller ε gives sharper assignments (ε = 0.05 in SwAV and Leopart; 3 iterations). A few
iterations do not reach the fixed point: the prototype marginal of ``P`` is only close to
uniform (the tests measure how close).

Distributed: the samples are split over processes and every sum that runs over samples (the
global sum, the prototype sums, the total weight) is all-reduced inside, so 2 processes with
M/2 samples each return exactly the rows that 1 process with all M returns
(``tests/ops/test_sinkhorn.py`` checks it). The column sums are per sample and stay local. As in
the official distributed code, every process must call this function the same number of times
(it all-reduces ``3 + iterations`` times).

Differences from the official code (MkuuWaUjinga/leopart @7835701 ``src/leopart.py``
``sinkhorn`` / ``distributed_sinkhorn``), none of which changes the result for cosine scores:

* the global maximum of the scores (all-reduced) is subtracted before the exponential, so
  scores beyond ±88·ε do not overflow in float32 (any constant cancels in ``Q /= Σ Q``);
* ``column_weights`` give samples their own mass ``c_j = w_j / Σ w`` (Leopart's queue rows get
  weight 0 until the queue is full, which equals leaving them out, without a host sync);
* sums are clamped away from 0, so a prototype or sample whose scores all underflow keeps a
  zero row instead of NaNs;
* the computation runs in float32 whatever the input dtype (autocast), under ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densessl.ops.distributed import all_reduce_max, all_reduce_sum

__all__ = ["sinkhorn_knopp"]

_TINY = 1e-30


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    column_weights: Tensor | None = None,
) -> Tensor:
    """Balanced soft assignments ``[M, K]`` of this process's samples to the prototypes.

    Args:
        scores: ``[M, K]`` similarities of M samples (this process's share) to K prototypes;
            Leopart passes cosine similarities in [-1, 1]. Detached; any float dtype.
        epsilon: entropic regularisation ε (> 0); smaller = sharper targets.
        iterations: Sinkhorn iterations (>= 0; 3 in SwAV/Leopart).
        column_weights: optional ``[M]`` non-negative sample masses; a sample with weight 0
            does not count in any marginal and gets an all-zero row. At least one sample
            (over all processes) must have positive weight.

    Returns:
        float32 ``[M, K]`` on the scores' device; rows of positive-weight samples sum to 1.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn_knopp expects scores [M, K], got {tuple(scores.shape)}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    num_samples, num_prototypes = scores.shape
    if column_weights is not None and column_weights.shape != (num_samples,):
        raise ValueError(
            f"column_weights must have shape [{num_samples}], got {tuple(column_weights.shape)}"
        )
    s = scores.detach().float()
    peak = s.max() if s.numel() else s.new_full((), float("-inf"))
    peak = all_reduce_max(peak.clone())
    q = torch.exp((s - peak) / epsilon).t()  # [K, M]
    if column_weights is None:
        weights = None
        total = all_reduce_sum(s.new_tensor(float(num_samples)))
    else:
        weights = column_weights.detach().to(device=s.device, dtype=torch.float32)
        q = q * weights
        total = all_reduce_sum(weights.sum())
    q /= all_reduce_sum(q.sum()).clamp_min(_TINY)
    col_target = (weights / total) if weights is not None else 1.0 / total
    for _ in range(iterations):
        row = all_reduce_sum(q.sum(dim=1))
        q *= ((1.0 / num_prototypes) / row.clamp_min(_TINY)).unsqueeze(1)
        q *= (col_target / q.sum(dim=0).clamp_min(_TINY)).unsqueeze(0)
    return (q / q.sum(dim=0, keepdim=True).clamp_min(_TINY)).t()
