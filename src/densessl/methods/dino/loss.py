"""DINO's centred and sharpened cross-entropy, with a distributed-aware centre.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(facebookresearch/dino ``main_dino.py``, class ``DINOLoss``). Also used, as a separate
instance with its own centre, for SelfPatch's patch-level loss (Yun et al., "Patch-level
Representation Learning for Self-Supervised Vision Transformers", CVPR 2022).

For teacher views ``g < G`` and student views ``v < V`` (teacher view ``g`` is the same crop
as student view ``g``) with logits over K prototypes:

    P_t^g = softmax((t_g − c) / τt)           (no gradient)
    log P_s^v = log_softmax(s_v / τs)
    ℓ(g, v) = mean over batch (and tokens) of −Σ_k P_t^g[k] · log P_s^v[k]
    L = mean of ℓ(g, v) over the pairs (all v ≠ g by default)

and after each step the centre follows ``c ← m·c + (1 − m)·mean(t)``, the mean running over
every teacher view, sample and token of *all* processes.

Unlike the official class, the teacher temperature is an argument (the method owns its
schedule), views are passed as sequences instead of concatenated chunks, the centre update
is a separate call, and the all-reduce is skipped without a process group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.ops.distributed import all_reduce_sum

__all__ = ["DINOLoss", "view_pairs"]


def view_pairs(
    num_teacher: int, num_student: int, skip_same_view: bool = True, same_view_only: bool = False
) -> list[tuple[int, int]]:
    """The (teacher view g, student view v) pairs the loss averages over.

    Args:
        num_teacher: G, teacher views (the first G student views are the same crops).
        num_student: V >= G, student views.
        skip_same_view: drop the pairs ``v == g`` (DINO's image loss).
        same_view_only: keep only ``v == g`` (SelfPatch's patch loss: patch i of a crop
            predicts the teacher's target for the same patch of the same crop). Takes
            precedence over ``skip_same_view``.

    Returns:
        ``[(g, v), ...]`` in teacher-major order (the official summation order).
    """
    if same_view_only:
        return [(g, g) for g in range(num_teacher)]
    return [
        (g, v)
        for g in range(num_teacher)
        for v in range(num_student)
        if not (skip_same_view and v == g)
    ]


class DINOLoss(nn.Module):
    """Cross-entropy between a centred, sharpened teacher and a student (see module doc).

    Args:
        out_dim: number of prototypes K (the last dimension of every logit tensor).
        student_temp: τs > 0 (0.1 in DINO and SelfPatch).
        center_momentum: m in [0, 1) of the centre EMA (0.9).

    Buffers:
        center: ``[1, K]`` float32, zeros at init. It broadcasts over ``[B, K]`` image logits
            and ``[B, N, K]`` patch logits; it is saved in the ``state_dict``.

    Shapes:
        Each view is ``[B, K]`` (image level) or ``[B, N, K]`` (patch level, N tokens); the
        two sides of a pair must have equal shapes. Logits of any float dtype are computed
        in float32 (autocast is disabled inside).
    """

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if not student_temp > 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temp={self.student_temp}, "
            f"center_momentum={self.center_momentum}"
        )

    # ------------------------------------------------------------------------------- checks
    def _views(self, logits: Sequence[Tensor] | Tensor, what: str) -> list[Tensor]:
        views = [logits] if isinstance(logits, Tensor) else list(logits)
        if not views:
            raise ValueError(f"{what}: expected at least one view, got none")
        for i, view in enumerate(views):
            if view.dim() not in (2, 3) or view.shape[-1] != self.out_dim:
                raise ValueError(
                    f"{what}[{i}]: expected [B, {self.out_dim}] or [B, N, {self.out_dim}], "
                    f"got {list(view.shape)}"
                )
        return views

    @staticmethod
    def _check_temp(teacher_temp: float) -> float:
        if not teacher_temp > 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        return float(teacher_temp)

    def _teacher_log_probs(self, teacher: Tensor, teacher_temp: float) -> Tensor:
        """``log_softmax((t − c) / τt)`` in float32, detached."""
        return F.log_softmax((teacher.detach().float() - self.center) / teacher_temp, dim=-1)

    # ------------------------------------------------------------------------------- loss
    def forward(
        self,
        student_logits: Sequence[Tensor],
        teacher_logits: Sequence[Tensor],
        teacher_temp: float,
        skip_same_view: bool = True,
        same_view_only: bool = False,
    ) -> Tensor:
        """Mean over view pairs of the per-sample (per-token) cross-entropy.

        Args:
            student_logits: V student views, each ``[B, K]`` or ``[B, N, K]``.
            teacher_logits: G <= V teacher views; teacher view g is student view g's crop.
                Detached here (no gradient flows into the teacher).
            teacher_temp: τt > 0 for this step (DINO warms it up from 0.04).
            skip_same_view: skip the pairs v == g (DINO). False adds them (e.g. one view).
            same_view_only: only the pairs v == g (SelfPatch's patch loss); overrides
                ``skip_same_view``.

        Returns:
            Scalar float32 loss ``mean_{(g,v)} mean_{b(,n)} −Σ_k P_t^g log P_s^v``.

        Raises:
            ValueError: on bad temperature, shapes, G > V, or no pair to average.
        """
        temp_t = self._check_temp(teacher_temp)
        students = self._views(student_logits, "student_logits")
        teachers = self._views(teacher_logits, "teacher_logits")
        if len(teachers) > len(students):
            raise ValueError(
                f"got {len(teachers)} teacher views but only {len(students)} student views; "
                "teacher view g must be the same crop as student view g"
            )
        pairs = view_pairs(len(teachers), len(students), skip_same_view, same_view_only)
        if not pairs:
            raise ValueError(
                "no (teacher, student) view pair to average: with one view pass "
                "skip_same_view=False"
            )
        for g, v in pairs:
            if teachers[g].shape != students[v].shape:
                raise ValueError(
                    f"teacher view {g} {list(teachers[g].shape)} and student view {v} "
                    f"{list(students[v].shape)} must have the same shape"
                )
        device_type = students[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            with torch.no_grad():
                teacher_probs = [self._teacher_log_probs(t, temp_t).exp() for t in teachers]
            used = sorted({v for _, v in pairs})
            student_log_probs = {
                v: F.log_softmax(students[v].float() / self.student_temp, dim=-1) for v in used
            }
            total = students[0].new_zeros((), dtype=torch.float32)
            for g, v in pairs:
                total = total + torch.sum(-teacher_probs[g] * student_log_probs[v], dim=-1).mean()
            return total / len(pairs)

    # ------------------------------------------------------------------------------- centre
    @torch.no_grad()
    def update_center(self, teacher_logits: Sequence[Tensor] | Tensor) -> None:
        """EMA update of the centre with the mean teacher logit, all-reduced across processes.

        ``c ← m·c + (1 − m)·(Σ t) / (#rows)``, where the sum and the row count run over all
        given views, samples (and tokens) of every process. Sum and count are all-reduced
        (not the local mean), so uneven per-process batches give the single-process result.
        Without a process group it is a plain local update. Call it after the loss; the
        method chooses which views feed it (DINO: the global views; SelfPatch: all views).

        Args:
            teacher_logits: one tensor or a sequence of views, each ``[B, K]`` or
                ``[B, N, K]`` (views may have different B and N).
        """
        views = self._views(teacher_logits, "teacher_logits")
        with torch.autocast(device_type=self.center.device.type, enabled=False):
            rows = torch.cat([v.detach().float().reshape(-1, self.out_dim) for v in views])
            stats = torch.empty(self.out_dim + 1, dtype=torch.float32, device=self.center.device)
            stats[: self.out_dim] = rows.sum(dim=0)
            stats[self.out_dim] = rows.shape[0]
            all_reduce_sum(stats)
            count = stats[self.out_dim]
            batch_center = (stats[: self.out_dim] / count.clamp_min(1.0)).unsqueeze(0)
            m = self.center_momentum
            updated = self.center * m + batch_center * (1.0 - m)
            # No-op if no process held any row; torch.where avoids a host-device sync.
            self.center.copy_(torch.where(count > 0, updated, self.center))

    # ------------------------------------------------------------------------------- monitoring
    @torch.no_grad()
    def diagnostics(
        self, teacher_logits: Sequence[Tensor] | Tensor, teacher_temp: float
    ) -> dict[str, Tensor]:
        """Collapse diagnostics of the teacher's centred, sharpened distribution (local batch).

        With ``p_i = softmax((t_i − c)/τt)`` for every row i (view, sample, token; M rows),
        ``p̄ = mean_i p_i`` and ``q = softmax(c/τt)`` (entropies in nats, K = out_dim):

        * ``teacher_entropy`` = mean_i H(p_i). ln K → uniform collapse (every output flat);
          0 → every output one-hot (healthy when combined with a high batch entropy).
        * ``teacher_batch_entropy`` = H(p̄). Low → dominant-dimension collapse (every sample
          picks the same prototypes); high → many prototypes in use.
        * ``teacher_mutual_info`` = H(p̄) − mean_i H(p_i) = mean_i KL(p_i ‖ p̄) >= 0: how much
          the teacher's output depends on its input; 0 under either kind of collapse.
        * ``kl_to_center`` = mean_i KL(p_i ‖ q): divergence between the sharpened teacher
          and the centre's own distribution sharpened at the same temperature.

        Args:
            teacher_logits: one tensor or a sequence of views, ``[B, K]`` or ``[B, N, K]``.
            teacher_temp: τt > 0 used by the loss at this step.

        Returns:
            Detached float32 0-d tensors on the logits' device (no ``.item()``, no sync).
        """
        temp_t = self._check_temp(teacher_temp)
        views = self._views(teacher_logits, "teacher_logits")
        with torch.autocast(device_type=self.center.device.type, enabled=False):
            rows = torch.cat([v.detach().float().reshape(-1, self.out_dim) for v in views])
            log_p = self._teacher_log_probs(rows, temp_t)
            p = log_p.exp()
            entropy = -(p * log_p).sum(dim=-1).mean()
            p_mean = p.mean(dim=0)
            batch_entropy = -torch.special.xlogy(p_mean, p_mean).sum()
            log_q = F.log_softmax(self.center / temp_t, dim=-1)
            kl_to_center = (p * (log_p - log_q)).sum(dim=-1).mean()
        return {
            "teacher_entropy": entropy,
            "teacher_batch_entropy": batch_entropy,
            "teacher_mutual_info": batch_entropy - entropy,
            "kl_to_center": kl_to_center,
        }
