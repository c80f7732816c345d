"""LOCA's objective: reference-position classification plus patch-level clustering.

Caron, Houlsby and Schmid, "Location-Aware Self-Supervised Transformers for Semantic
Segmentation", WACV 2024 (arXiv 2212.02400); official code google-research/scenic
@4a38d475 ``scenic/projects/loca`` (``trainer.py`` ``loca_train_step``, ``utils.py``
``sinkhorn``; the cross-entropy is scenic's ``weighted_softmax_cross_entropy``). Knows
nothing of the backbone: it takes logits, labels and the image each query row belongs to.

For M query patches (all query views, rows in any order), N reference positions, K
prototypes and b reference images::

    y_m ∈ {−1, 0..N−1}     reference position of query patch m (−1: outside), w_m = [y_m ≥ 0]
    L_pos = Σ_m w_m · CE(pos_logits_m, y_m) / (c + 1e-8)      c = Σ_m w_m (see below)
    P     = sinkhorn(softmax(Z_ref / τ_sharp))        Z_ref [b·N, K] teacher cosines, no grad
    T_m   = P[image_m, y_m]                           target: assignment of the reference
                                                      patch at the query patch's position
    L_ce  = Σ_m w_m · CE_soft(T_m, Z_m / τ_s) / (c + 1e-8)
    p̄     = mean over all M rows (and processes) of softmax(Z_m / τ_s)
    L_me  = Σ_k p̄_k log p̄_k                           "me-max": −H(p̄), ≥ −log K
    L     = λ_pos · L_pos + λ_clu · (L_ce + λ_me · L_me)     official: all λ = 1

τ_sharp = 0.05 (``sharpening``), τ_s = 0.1. The Sinkhorn (:func:`loca_sinkhorn`) is the
official one: starting from the sharpened softmax (rows sum to 1), each of 3 iterations
divides every prototype column by its sum over all rows of all processes, then every row by
its sum. It differs from SwAV's :func:`densessl.ops.sinkhorn.sinkhorn_knopp` (which starts from
``exp(Z/ε)`` normalised globally), so it is not shared. The me-max includes the rows
outside the reference (w = 0), as the official code.

Distributed: the Sinkhorn column sums and p̄ are all-reduced inside (p̄ with an identity
backward, :func:`densessl.ops.distributed.all_reduce_mean_autograd`), and the two
cross-entropies divide by ``c`` = the valid count of all processes / W, so DDP's averaged
gradient is that of the global weighted mean. In one process ``c`` is the official value; with
several, the official code divides by each device's own count. Logged statistics are
all-reduced too.

Differences from the official code that do not change the values: −1 labels clamped before
the gather, Sinkhorn sums clamped away from 0, ``xlogy`` for p̄ log p̄, float32 with autocast
off. Details: docs/methods/loca.md
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.ops.distributed import (
    all_reduce_max,
    all_reduce_mean_autograd,
    all_reduce_sum,
    world_size,
)

__all__ = ["LOCALoss", "loca_sinkhorn"]

_TINY = 1e-30


@torch.no_grad()
def loca_sinkhorn(probs: Tensor, iterations: int = 3) -> Tensor:
    """LOCA's Sinkhorn-Knopp on assignment probabilities ``[M, K]`` (rows sum to 1).

    Each iteration divides every column by its sum over the rows of all processes, then
    every row by its own sum. Returns float32 ``[M, K]`` whose rows sum to 1.
    """
    if probs.dim() != 2:
        raise ValueError(f"loca_sinkhorn expects probabilities [M, K], got {tuple(probs.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    x = probs.detach().float().clone()
    for _ in range(iterations):
        x /= all_reduce_sum(x.sum(dim=0, keepdim=True)).clamp_min(_TINY)
        x /= x.sum(dim=1, keepdim=True).clamp_min(_TINY)
    return x


class LOCALoss(nn.Module):
    """``λ_pos · L_pos + λ_clu · (L_ce + λ_me · L_me)`` (see the module docstring).

    Args:
        num_positions: N, reference positions (the position logits' width).
        student_temp: τ_s dividing the student cluster logits (0.1).
        sharpening: τ_sharp dividing the teacher logits before softmax + Sinkhorn (0.05).
        sinkhorn_iterations: 3.
        position_weight / cluster_weight / me_max_weight: λ_pos, λ_clu, λ_me (1, 1, 1).
    """

    def __init__(
        self,
        num_positions: int,
        student_temp: float = 0.1,
        sharpening: float = 0.05,
        sinkhorn_iterations: int = 3,
        position_weight: float = 1.0,
        cluster_weight: float = 1.0,
        me_max_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_positions < 1:
            raise ValueError(f"num_positions must be >= 1, got {num_positions}")
        if student_temp <= 0 or sharpening <= 0:
            raise ValueError(
                f"student_temp and sharpening must be > 0, got {student_temp}, {sharpening}"
            )
        self.num_positions = num_positions
        self.student_temp = float(student_temp)
        self.sharpening = float(sharpening)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.position_weight = float(position_weight)
        self.cluster_weight = float(cluster_weight)
        self.me_max_weight = float(me_max_weight)

    def extra_repr(self) -> str:
        return (
            f"num_positions={self.num_positions}, student_temp={self.student_temp}, "
            f"sharpening={self.sharpening}, weights=(pos={self.position_weight}, "
            f"clu={self.cluster_weight}, me={self.me_max_weight})"
        )

    def forward(
        self,
        position_logits: Tensor,
        labels: Tensor,
        student_logits: Tensor | None = None,
        teacher_logits: Tensor | None = None,
        row_image: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss and its terms.

        Args:
            position_logits: ``[M, N]`` query patches' logits over reference positions.
            labels: ``[M]`` long, reference position of each query patch or −1.
            student_logits: ``[M, K]`` student head (cosines) on the query patches; None
                (with ``teacher_logits``) for the position loss alone (LOCA v1).
            teacher_logits: ``[b, N, K]`` teacher head on every reference patch (no grad).
            row_image: ``[M]`` long, the reference image (0..b−1) of each query row.

        Returns:
            float32 scalars: ``loss``, ``position_loss``, ``position_accuracy`` (argmax =
            label among the valid rows), ``valid_fraction``; with the clustering terms also
            ``cluster_loss`` (``L_ce + λ_me · L_me``), ``cluster_ce``, ``me_max``,
            ``assignment_entropy`` (H(p̄), ``log K`` at best), ``target_entropy`` (mean
            entropy of the Sinkhorn targets of the valid rows) and ``targets_used``
            (prototypes that are the argmax of at least one reference patch's target).
            All but ``loss`` are detached.
        """
        rows = labels.shape[0]
        if position_logits.shape != (rows, self.num_positions) or labels.dim() != 1:
            raise ValueError(
                f"position_logits must be [M, {self.num_positions}] and labels [M]; got "
                f"{tuple(position_logits.shape)} and {tuple(labels.shape)}"
            )
        if (student_logits is None) != (teacher_logits is None):
            raise ValueError("give both student_logits and teacher_logits, or neither")
        device = position_logits.device
        labels = labels.to(device)
        valid = labels >= 0
        weight = valid.float()
        safe = labels.clamp_min(0)
        with torch.no_grad():  # valid and correct rows of all processes (one all-reduce)
            correct = (position_logits.argmax(dim=-1) == labels) & valid
            count = weight.sum()
            totals = all_reduce_sum(torch.stack([count, correct.float().sum()]))
            # the mean valid count per process: this batch's count in one process
            denominator = totals[0] / world_size()
        with torch.autocast(device_type=device.type, enabled=False):
            ce = F.cross_entropy(position_logits.float(), safe, reduction="none")
            position_loss = (ce * weight).sum() / (denominator + 1e-8)
            out = {
                "position_accuracy": totals[1] / totals[0].clamp_min(1.0),
                "valid_fraction": count / max(rows, 1),
            }
            loss = self.position_weight * position_loss
            out["position_loss"] = position_loss.detach()
            if student_logits is not None:
                assert teacher_logits is not None
                terms = self._cluster(
                    student_logits, teacher_logits, safe, weight, denominator, row_image
                )
                loss = loss + self.cluster_weight * terms.pop("cluster_loss_grad")
                out.update(terms)
        return {"loss": loss, **out}

    def _cluster(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        weight: Tensor,
        denominator: Tensor,
        row_image: Tensor | None,
    ) -> dict[str, Tensor]:
        rows, num_prototypes = student_logits.shape
        if teacher_logits.dim() != 3 or teacher_logits.shape[1:] != (
            self.num_positions,
            num_prototypes,
        ):
            raise ValueError(
                f"teacher_logits must be [b, {self.num_positions}, {num_prototypes}], got "
                f"{tuple(teacher_logits.shape)}"
            )
        if row_image is None or row_image.shape != (rows,):
            raise ValueError(f"row_image must be [{rows}] with the clustering loss")
        with torch.no_grad():
            sharpened = F.softmax(teacher_logits.float().flatten(0, 1) / self.sharpening, dim=-1)
            assignment = loca_sinkhorn(sharpened, self.sinkhorn_iterations)
            flat_index = row_image.to(labels.device) * self.num_positions + labels
            targets = assignment[flat_index]  # [M, K]
        log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        cluster_ce = (-(targets * log_probs).sum(dim=-1) * weight).sum() / (denominator + 1e-8)
        mean = all_reduce_mean_autograd(log_probs.exp().mean(dim=0))
        me_max = torch.special.xlogy(mean, mean).sum()
        total = cluster_ce + self.me_max_weight * me_max
        with torch.no_grad():
            target_entropy = -torch.special.xlogy(targets, targets).sum(dim=-1)
            entropy_sum = all_reduce_sum((target_entropy * weight).sum())
            valid_all = denominator * world_size()
            used = torch.zeros(num_prototypes, device=assignment.device)
            used.index_fill_(0, assignment.argmax(dim=-1), 1.0)
            all_reduce_max(used)  # a prototype used by any process
        return {
            "cluster_loss_grad": total,
            "cluster_loss": total.detach(),
            "cluster_ce": cluster_ce.detach(),
            "me_max": me_max.detach(),
            "assignment_entropy": -me_max.detach(),
            "target_entropy": entropy_sum / valid_all.clamp_min(1.0),
            "targets_used": used.sum(),
        }
