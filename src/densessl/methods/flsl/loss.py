"""FLSL's objective: intra-view mean-shift, inter-view k-means, volume maximisation.

Su et al., "FLSL: Feature-level Self-supervised Learning", NeurIPS 2023; official code
QingSuML/FLSL @acb5d6f (``utils.py``: ``flsl_meanshift``, ``NonEmptyPriorKL``,
``Centering``, ``AllReduce``; ``main_flsl.py``: ``FLSLLoss``). Knows nothing of the backbone:
it takes tokens, modes and head logits.

**Non-parametric attention** (:func:`nonparametric_attention`): for queries ``x [n, q, D]``
and keys ``z [n, N, D]`` (the same vectors serve as values),

    mode = softmax(α · x zᵀ) z                          [n, q, D]

with no projections, no heads and no masking of the query itself. α is an *inverse*
temperature on raw dot products; FLSL uses α_sa = 0.1/√D against the same view's tokens
(one mean-shift step: the token's "mode") and α_ca = 0.2/√D against the EMA teacher's view
(the token's positive in the other view). With post-LayerNorm tokens (‖z‖ ≈ √D) the logits
are O(1).

**Loss** (:class:`FLSLLoss`), for M sampled student tokens ``x_i``, their modes ``m_i``,
student logits ``s_i = g_s(m_i)`` and teacher logits ``t_i = g_t(CA(x_i))`` over K
prototypes (``[M, K]``)::

    L_ms  = 2 − 2 · mean_i cos(x_i, m_i)                    gradient into x and m
    L_km  = mean_i −Σ_k softmax((t_i − c)/τt)_k · log softmax(s_i/τs)_k
    p̄     = mean over the tokens of every process of softmax(s_i/τs)
    L_vmr = KL(p̄ ‖ uniform) = Σ_k p̄_k log p̄_k + log K     ≥ 0
    L     = υ · L_ms + η · L_km + γ · L_vmr                 (υ, η, γ) = (0.03, 1, 5)

``c`` is zero unless teacher centring is on (DINO's centre, momentum 0.9, all-reduced:
the official ``--teacher_centering``, off in the paper recipe, where the volume-maximisation
regulariser prevents empty clusters instead). The k-means term is DINO's cross-entropy
(:class:`densessl.methods.dino.loss.DINOLoss` with a single view pair), computed with
``log_softmax`` where the official code takes ``log(softmax)`` (equal in float32, but
``log(softmax)`` can reach ``-inf`` under fp16).

p̄ is all-reduced with a mean over processes whose backward is the identity (the official
``AllReduce``): DDP averages the gradients, so each process's gradient is exact. This
assumes every process holds the same number of tokens (true: equal batch sizes and views).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.methods.dino.loss import DINOLoss
from densessl.ops.distributed import all_reduce_mean_autograd

__all__ = ["FLSLLoss", "all_reduce_mean_autograd", "nonparametric_attention", "volume_kl"]


def nonparametric_attention(queries: Tensor, keys: Tensor, scale: float) -> Tensor:
    """``softmax(scale · Q Kᵀ) K`` in float32 (autocast off), see the module docstring.

    Args:
        queries: ``[n, q, D]`` (sampled tokens of a view).
        keys: ``[n, N, D]`` (all tokens of the view attended to; also the values).
        scale: α, multiplies the raw dot products (an inverse temperature).

    Returns:
        ``[n, q, D]`` float32: the attention-weighted mean of ``keys`` for every query.
    """
    if queries.dim() != 3 or keys.dim() != 3 or queries.shape[::2] != keys.shape[::2]:
        raise ValueError(
            f"expected queries [n, q, D] and keys [n, N, D], got {list(queries.shape)} and "
            f"{list(keys.shape)}"
        )
    with torch.autocast(device_type=queries.device.type, enabled=False):
        keys = keys.float()
        logits = queries.float() @ keys.transpose(1, 2) * scale
        return logits.softmax(dim=-1) @ keys


def volume_kl(probs: Tensor) -> tuple[Tensor, Tensor]:
    """FLSL's volume-maximisation regulariser ``KL(p̄ ‖ uniform)`` and ``H(p̄)``.

    Args:
        probs: ``[M, K]`` student assignment probabilities (rows sum to 1).

    Returns:
        ``(kl, entropy)``: float32 scalars with ``kl = Σ p̄ log p̄ + log K = log K − H(p̄)``,
        where ``p̄`` is the mean row of *all processes* (gradient flows into ``probs``).
        0 when every prototype gets the same mass; log K when one takes it all.
    """
    if probs.dim() != 2:
        raise ValueError(f"expected probabilities [M, K], got {list(probs.shape)}")
    mean = all_reduce_mean_autograd(probs.float().mean(dim=0))
    entropy = -torch.special.xlogy(mean, mean).sum()
    return math.log(probs.shape[1]) - entropy, entropy


class FLSLLoss(nn.Module):
    """``υ·L_ms + η·L_km + γ·L_vmr`` (see the module docstring).

    Args:
        out_dim: number of prototypes K (4096 in the paper recipe).
        student_temp: τs (0.1).
        meanshift_weight: υ (0.03); a schedule may pass another value per call.
        kmeans_weight: η (1.0).
        vmr_weight: γ (5.0).
        volume_maximization: add the KL-to-uniform regulariser (paper: on).
        teacher_centering: subtract DINO's running centre from the teacher logits (paper:
            off; the official alternative to the regulariser). The centre is updated by
            :meth:`update_center`, which the method calls after the loss.
        center_momentum: momentum of that centre (0.9).

    Buffers:
        kmeans.center: ``[1, K]``, zeros unless ``teacher_centering``.
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        meanshift_weight: float = 0.03,
        kmeans_weight: float = 1.0,
        vmr_weight: float = 5.0,
        volume_maximization: bool = True,
        teacher_centering: bool = False,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if kmeans_weight < 0 or vmr_weight < 0:
            raise ValueError(
                f"kmeans_weight and vmr_weight must be >= 0, got {kmeans_weight}, {vmr_weight}"
            )
        self.out_dim = out_dim
        self.student_temp = float(student_temp)
        self.meanshift_weight = float(meanshift_weight)
        self.kmeans_weight = float(kmeans_weight)
        self.vmr_weight = float(vmr_weight)
        self.volume_maximization = volume_maximization
        self.teacher_centering = teacher_centering
        self.kmeans = DINOLoss(out_dim, student_temp, center_momentum)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, weights=(υ={self.meanshift_weight}, "
            f"η={self.kmeans_weight}, γ={self.vmr_weight}), "
            f"volume_maximization={self.volume_maximization}, "
            f"teacher_centering={self.teacher_centering}"
        )

    def forward(
        self,
        tokens: Tensor,
        modes: Tensor,
        student_logits: Tensor,
        teacher_logits: Tensor,
        teacher_temp: float,
        meanshift_weight: float | None = None,
    ) -> dict[str, Tensor]:
        """The loss and its terms.

        Args:
            tokens: ``[M, D]`` sampled student tokens ``x_i``.
            modes: ``[M, D]`` their intra-view modes ``m_i``.
            student_logits: ``[M, K]`` student head on the modes.
            teacher_logits: ``[M, K]`` teacher head on the cross-attention modes (detached
                here).
            teacher_temp: τt of this step.
            meanshift_weight: υ of this step (None: the constructor's).

        Returns:
            float32 scalars ``loss``, ``meanshift_loss``, ``kmeans_loss``, ``vmr`` (KL to
            uniform; logged even when the regulariser is off) and ``assignment_entropy``
            (``H(p̄)`` in nats, ``log K`` at best); all but ``loss`` detached.
        """
        if tokens.shape != modes.shape or tokens.dim() != 2:
            raise ValueError(
                f"tokens and modes must both be [M, D], got {list(tokens.shape)} and "
                f"{list(modes.shape)}"
            )
        if student_logits.shape != (tokens.shape[0], self.out_dim):
            raise ValueError(
                f"student_logits must be [{tokens.shape[0]}, {self.out_dim}], "
                f"got {list(student_logits.shape)}"
            )
        upsilon = self.meanshift_weight if meanshift_weight is None else float(meanshift_weight)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            cosine = F.cosine_similarity(tokens.float(), modes.float(), dim=-1, eps=1e-12)
            meanshift = 2.0 - 2.0 * cosine.mean()
            kmeans = self.kmeans([student_logits], [teacher_logits], teacher_temp, False)
            if self.volume_maximization:
                probs = F.softmax(student_logits.float() / self.student_temp, dim=-1)
                vmr, entropy = volume_kl(probs)
            else:
                with torch.no_grad():
                    probs = F.softmax(student_logits.float() / self.student_temp, dim=-1)
                    vmr, entropy = volume_kl(probs)
            loss = upsilon * meanshift + self.kmeans_weight * kmeans
            if self.volume_maximization:
                loss = loss + self.vmr_weight * vmr
        return {
            "loss": loss,
            "meanshift_loss": meanshift.detach(),
            "kmeans_loss": kmeans.detach(),
            "vmr": vmr.detach(),
            "assignment_entropy": entropy.detach(),
        }

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """Teacher centring only: EMA of the centre with this step's teacher logits
        (all-reduced). Call after :meth:`forward`; a no-op when centring is off."""
        if self.teacher_centering:
            self.kmeans.update_center(teacher_logits)
