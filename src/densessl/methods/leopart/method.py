"""Leopart: dense clustering fine-tuning of a ViT (object parts by spatial prototypes).

Ziegler & Asano, "Self-Supervised Learning of Object Parts for Semantic Segmentation", CVPR
2022; official code MkuuWaUjinga/leopart @7835701 (``src/leopart.py``, ``src/vit.py``,
``experiments/configs/train_*.yml``). Usually a fine-tuning stage: both backbones start from
DINO (``--init``, :mod:`densessl.train.warm_start`). The teacher's Sinkhorn assignments of
each global crop (:mod:`densessl.ops.sinkhorn`, with a queue of past embeddings) are
predicted by the student from every other crop on their RoI-aligned intersection, masked by
the CLS-attention foreground (:func:`densessl.methods.leopart.loss.leopart_loss`).

Network (student, and an EMA teacher without drop-path)::

    crops ─► ViT ─► patches [B, h, w, D] ─► MLP (D→2048→2048→256, GELU, no norm) ─► L2-norm
          ─► embeddings z [B, h, w, 256] ─► prototypes (K = 300 unit rows) ─► scores [B, h, w, K]

Official-code quirks, available as options and **off by default** (the defaults are what the
paper describes and what DINO does):

* ``leopart.independent_teacher_heads``: teacher head and prototypes start random, not copied;
* ``leopart.queue_prototypes="student"``: the queue is scored with the student's prototypes;
* ``leopart.teacher_lag``: the EMA moves towards the student of before the optimiser step.

Other differences, no option: each image pushes its own ``queue_rows_per_image`` queue rows
(keyed by the sample); the queue is checkpointed; the teacher runs under ``no_grad``; the
``use_teacher=False`` ablation is not offered.

Details: docs/methods/leopart.md
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.views.multicrop import ViewsConfig, group_by_resolution
from densessl.errors import brief
from densessl.methods.base import Method, StepInfo, register_method
from densessl.methods.leopart.loss import EmbeddingQueue, leopart_loss
from densessl.methods.student_teacher import LaggedEMA, StudentTeacher, make_teacher
from densessl.models.heads import MLPProjection, Prototypes
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.attention_foreground import attention_foreground
from densessl.ops.distributed import world_size
from densessl.ops.sinkhorn import sinkhorn_knopp

__all__ = ["Leopart", "LeopartHead", "LeopartNetwork", "LeopartParams"]

LOSS_MASKS = ("fg", "bg", "all")
QUEUE_PROTOTYPES = ("teacher", "student")


@dataclass
class LeopartParams:
    """Leopart hyper-parameters (defaults: the official ViT-S/16 recipe).

    Attributes:
        num_prototypes: K, the prototypes (300; the ablations try 100 and 500).
        projection_dim: size of the L2-normalised embedding (256).
        hidden_dim: hidden width of the projection MLP (2048).
        num_layers: linear layers of the projection MLP (3).
        temperature: τ of the student softmax (0.1).
        epsilon: Sinkhorn-Knopp ε (0.05; smaller = sharper targets).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        queue_length: teacher embeddings kept per target crop over all processes (8192;
            0 = no queue). Worth it when a batch has fewer tokens than ~10 x K.
        queue_rows_per_image: rows pushed per step and target, per image of the batch (10).
        roi_align_size: side of the grid crops are aligned on (7).
        loss_mask: ``"fg"`` (default of the train configs), ``"bg"`` or ``"all"`` (from
            scratch: there is no useful attention to take a mask from).
        fg_mass: fraction of the blurred CLS-attention mass kept as foreground (0.6).
        fg_blur_sigma: σ of the attention blur, in patches (0.6; kernel 7).
        fg_remove_small: drop foreground components of at most 2 patches (True).
        head_lr_scale: learning rate of projection head and prototypes relative to the
            backbone's ``optim.lr`` (10: 1e-4 vs 1e-5 in the paper).
        independent_teacher_heads: official quirk, off (see the module docstring).
        queue_prototypes: ``"teacher"`` or the official quirk ``"student"``.
        teacher_lag: official quirk (EMA before the optimiser step), off.
    """

    num_prototypes: int = 300
    projection_dim: int = 256
    hidden_dim: int = 2048
    num_layers: int = 3
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_length: int = 8192
    queue_rows_per_image: int = 10
    roi_align_size: int = 7
    loss_mask: str = "fg"
    fg_mass: float = 0.6
    fg_blur_sigma: float = 0.6
    fg_remove_small: bool = True
    head_lr_scale: float = 10.0
    independent_teacher_heads: bool = False
    queue_prototypes: str = "teacher"
    teacher_lag: bool = False

    section: ClassVar[str] = "leopart"

    def __post_init__(self) -> None:
        positive = ("num_prototypes", "projection_dim", "hidden_dim", "num_layers")
        for name in (*positive, "roi_align_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"leopart.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "epsilon", "head_lr_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"leopart.{name} must be > 0, got {getattr(self, name)}")
        for name in ("sinkhorn_iterations", "queue_length", "queue_rows_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"leopart.{name} must be >= 0, got {getattr(self, name)}")
        if self.fg_blur_sigma < 0:
            raise ValueError(f"leopart.fg_blur_sigma must be >= 0, got {self.fg_blur_sigma}")
        if self.loss_mask not in LOSS_MASKS:
            raise ValueError(
                f"leopart.loss_mask must be one of {LOSS_MASKS}, got {brief(self.loss_mask)}"
            )
        if self.queue_prototypes not in QUEUE_PROTOTYPES:
            raise ValueError(
                f"leopart.queue_prototypes must be one of {QUEUE_PROTOTYPES}, "
                f"got {brief(self.queue_prototypes)}"
            )
        if not 0 < self.fg_mass <= 1:
            raise ValueError(f"leopart.fg_mass must be in (0, 1], got {self.fg_mass}")


class LeopartHead(nn.Module):
    """Projection MLP (L2-normalised output) followed by the prototypes.

    Args:
        in_dim: the backbone's token width D.
        params: sizes (``projection_dim``, ``hidden_dim``, ``num_layers``, ``num_prototypes``).

    Shapes: ``[..., D]`` → ``(embeddings [..., projection_dim], scores [..., K])``.
    """

    def __init__(self, in_dim: int, params: LeopartParams) -> None:
        super().__init__()
        self.projection = MLPProjection(
            in_dim, params.projection_dim, params.hidden_dim, params.num_layers, normalize=True
        )
        self.prototypes = Prototypes(params.projection_dim, params.num_prototypes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.projection(x)
        return z, self.prototypes(z)


class ViewOutputs(NamedTuple):
    """Per-view outputs of :meth:`LeopartNetwork.forward_views`.

    Attributes:
        embeddings: per view ``[B, h, w, projection_dim]`` (unit norm).
        scores: per view ``[B, K, h, w]`` prototype scores (channels first, for RoI-Align).
        attention: per view ``[B, heads, h*w]`` CLS attention, or None when not asked.
        patches: the backbone tokens ``[n*B, h, w, D]`` of the first resolution.
    """

    embeddings: list[Tensor]
    scores: list[Tensor]
    attention: list[Tensor] | None
    patches: Tensor


class LeopartNetwork(StudentTeacher):
    """A ViT backbone (with CLS token) and a :class:`LeopartHead` on its patch tokens."""

    head: LeopartHead

    def forward_views(  # type: ignore[override]
        self, crops: Sequence[Tensor], attention: bool = False
    ) -> ViewOutputs:
        """Embeddings and scores of every view; one backbone and head call per resolution.

        Args:
            crops: views ``[B, 3, s_v, s_v]`` (consecutive views of one size are batched).
            attention: also return the last block's CLS→patch attention (teacher, for the
                foreground mask).
        """
        batch = crops[0].shape[0]
        embeddings: list[Tensor] = []
        scores: list[Tensor] = []
        attentions: list[Tensor] = []
        first: Tensor | None = None
        for _, stacked in group_by_resolution(list(crops)):
            if attention:
                _, patches, attn = self.backbone.tokens_and_attention(stacked)
                attentions.extend(attn.split(batch))
            else:
                _, patches = self.backbone.tokens(stacked)
            z, s = self.head(patches)
            embeddings.extend(z.split(batch))
            scores.extend(s.permute(0, 3, 1, 2).split(batch))
            if first is None:
                first = patches
        assert first is not None
        return ViewOutputs(embeddings, scores, attentions if attention else None, first)


@register_method
class Leopart(Method):
    """Leopart (see the module docstring)."""

    name = "leopart"
    description = (
        "dense clustering fine-tuning: Sinkhorn prototype targets of the teacher, predicted "
        "across crops on RoI-aligned intersections, foreground from CLS attention"
    )
    paper = (
        "Ziegler & Asano, Self-Supervised Learning of Object Parts for Semantic Segmentation, "
        "CVPR 2022"
    )
    Params = LeopartParams
    needs_cls_token = True

    def __init__(self, params: LeopartParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__(params, backbone, views)
        if not backbone.cls_token:
            raise ValueError(
                "leopart needs a backbone with a CLS token (its foreground mask is the CLS "
                "attention; set backbone.cls_token=true)"
            )
        student_backbone = build_backbone(backbone)
        self.student = LeopartNetwork(
            student_backbone, LeopartHead(student_backbone.embed_dim, params)
        )
        self.teacher = make_teacher(self.student, backbone)
        if params.independent_teacher_heads:
            self.teacher.head = LeopartHead(student_backbone.embed_dim, params).requires_grad_(
                False
            )
        self.queue: EmbeddingQueue | None = None
        length = params.queue_length // world_size()
        if length > 0:
            self.queue = EmbeddingQueue(views.num_global, length, params.projection_dim)
        self._lag = LaggedEMA()

    # -- Method interface ----------------------------------------------------------------
    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    def rank_local_buffers(self) -> list[str]:
        """Each process queues its own images' embeddings (``queue_length // processes``)."""
        if self.queue is None:
            return []
        return [f"queue.{name}" for name, _ in self.queue.named_buffers()]

    def lr_scale(self, parameter_name: str) -> float:
        """Projection head and prototypes train at ``head_lr_scale`` x the backbone's lr."""
        return self.params.head_lr_scale if parameter_name.startswith("student.head.") else 1.0

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA of the teacher; with ``teacher_lag`` towards the student of before the step."""
        if not self._lag.update(self.teacher, momentum):
            super().update_teacher(momentum)

    # -- the loss ------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        p = self.params
        crops: list[Tensor] = batch["crops"]
        boxes: Tensor = batch["boxes"]
        # Without flips in the views, skip the flip handling (it would cost a host sync).
        flips: Tensor | None = batch.get("flips") if self.views_config.flip_prob > 0 else None
        num_targets = self.views_config.num_global
        self.student.head.prototypes.normalize_()
        self.teacher.head.prototypes.normalize_()
        if p.teacher_lag and self.training:
            self._lag.take(self.student)
        with torch.no_grad():
            teacher = self.teacher.forward_views(
                crops[:num_targets], attention=p.loss_mask != "all"
            )
            masks = self._loss_masks(teacher)
            keys: Tensor | None = batch.get("key")  # per-sample queue picks (keyed_random)
            targets = [
                self._targets(t, teacher, None if masks is None else masks[t], keys)
                for t in range(num_targets)
            ]
        student = self.student.forward_views(crops)
        loss = leopart_loss(
            targets,
            student.scores,
            boxes,
            p.temperature,
            masks=masks,
            flips=flips,
            output_size=p.roi_align_size,
        )
        return {"loss": loss, **self._diagnostics(teacher, student, targets, masks)}

    def _loss_masks(self, teacher: ViewOutputs) -> list[Tensor] | None:
        """Per target view ``[B, h, w]`` bool: the tokens the loss (and queue) use."""
        if teacher.attention is None:
            return None
        p = self.params
        masks = []
        for attn, scores in zip(teacher.attention, teacher.scores, strict=True):
            fg = attention_foreground(
                attn,
                (scores.shape[-2], scores.shape[-1]),
                mass=p.fg_mass,
                blur_sigma=p.fg_blur_sigma,
                remove_small=p.fg_remove_small,
            )
            masks.append(~fg if p.loss_mask == "bg" else fg)
        return masks

    def _targets(
        self, target: int, teacher: ViewOutputs, mask: Tensor | None, keys: Tensor | None = None
    ) -> Tensor:
        """Sinkhorn targets ``[B, K, h, w]`` of target view ``target``; updates its queue."""
        p = self.params
        scores = teacher.scores[target]
        batch, num_prototypes, height, width = scores.shape
        flat = scores.permute(0, 2, 3, 1).reshape(-1, num_prototypes)
        weights = None
        if self.queue is not None:
            head = self.student.head if p.queue_prototypes == "student" else self.teacher.head
            queued = head.prototypes(self.queue.embeddings[target].to(flat.dtype))
            full = self.queue.full(target).to(flat.dtype)
            weights = torch.cat([full.expand(queued.shape[0]), flat.new_ones(flat.shape[0])])
            flat = torch.cat([queued, flat])
            embeddings = teacher.embeddings[target].reshape(-1, p.projection_dim)
            keep = None if mask is None else mask.reshape(-1)
            self.queue.push(
                target, embeddings, keep, max_rows=p.queue_rows_per_image * batch, sample_keys=keys
            )
        q = sinkhorn_knopp(flat, p.epsilon, p.sinkhorn_iterations, weights)
        q = q[-batch * height * width :]
        return q.reshape(batch, height, width, num_prototypes).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _diagnostics(
        self,
        teacher: ViewOutputs,
        student: ViewOutputs,
        targets: list[Tensor],
        masks: list[Tensor] | None,
    ) -> dict[str, Tensor]:
        """Collapse diagnostics on the local batch, first target view (no host sync).

        * ``assignment_entropy``: entropy (nats) of the histogram of the targets' argmax
          prototypes; ``ln K`` when all prototypes are used equally, 0 when one takes all;
        * ``used_prototypes``: fraction of prototypes that are some token's target argmax;
        * ``prediction_entropy``: the same histogram entropy for the student's argmax;
        * ``target_confidence``: mean max probability of the targets (sharpness);
        * ``fg_fraction``: fraction of tokens in the loss mask (1 with ``loss_mask=all``);
        * ``queue_full``: 1 once the queue takes part in Sinkhorn-Knopp;
        * ``patch_std``: spread of the teacher's L2-normalised backbone tokens.
        """
        num_prototypes = targets[0].shape[1]
        target = targets[0].float()
        entropy, used = _histogram_entropy(target.argmax(dim=1), num_prototypes)
        prediction, _ = _histogram_entropy(student.scores[0].argmax(dim=1), num_prototypes)
        ones = target.new_ones(())
        out = {
            "assignment_entropy": entropy,
            "used_prototypes": used,
            "prediction_entropy": prediction,
            "target_confidence": target.amax(dim=1).mean(),
            "fg_fraction": ones if masks is None else masks[0].float().mean(),
            "queue_full": 0 * ones if self.queue is None else self.queue.full(0).to(ones.dtype),
        }
        tokens = F.normalize(teacher.patches.flatten(1, 2).float(), dim=-1)
        out["patch_std"] = tokens.std(dim=(0, 1)).mean()
        return out


def _histogram_entropy(labels: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Entropy (nats) of the histogram of integer ``labels`` and the fraction of bins used."""
    flat = labels.reshape(-1)
    counts = torch.zeros(num_bins, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.float32)
    )
    freq = counts / counts.sum().clamp_min(1)
    entropy = -(freq * freq.clamp_min(1e-12).log()).sum()
    return entropy, (counts > 0).float().mean()
