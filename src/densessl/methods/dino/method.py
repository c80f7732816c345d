"""DINO: self-distillation with no labels (the image-level baseline).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021;
official code facebookresearch/dino @7c446df5 (``main_dino.py``, ``vision_transformer.py``).

A student (backbone + DINO head) sees 2 global and N local crops; an EMA teacher of the same
architecture sees the 2 global crops. The teacher's CLS logits are centred and sharpened,
and the student's softmax over every other view is trained to match them (cross-entropy over
all (global g, view v != g) pairs). Crops of one resolution go through the backbone in one
call; the head runs once on all CLS tokens.

Choices (official code = paper here):
* the teacher is a full copy of the student (backbone and head) at init, without drop-path;
* the centre is updated after every step from both global views' teacher logits, with
  momentum 0.9, all-reduced across processes;
* the teacher temperature warms up linearly from ``warmup_teacher_temp`` to
  ``teacher_temp`` over ``warmup_teacher_temp_epochs``, per step (the official array is
  indexed by the integer epoch);
* last-layer freezing, per-parameter clipping, schedules: :mod:`densessl.train.trainer`.

Details: docs/methods/dino.md
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.views.multicrop import ViewsConfig
from densessl.methods.base import Method, StepInfo, register_method
from densessl.methods.dino.loss import DINOLoss
from densessl.methods.student_teacher import StudentTeacher, make_teacher
from densessl.models.heads import DINOHead
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.schedules import linear_warmup_constant


@dataclass
class DINOParams:
    """DINO hyper-parameters (defaults: the official ViT-S/16 recipe).

    Attributes:
        out_dim: number of prototypes K of the head (65536 in the paper; 1k-8k converge
            faster on small data).
        hidden_dim / bottleneck_dim: head MLP width and the L2-normalised bottleneck.
        use_bn_in_head: BatchNorm in the head MLP (off in the paper's ViT runs).
        norm_last_layer: freeze the magnitude of the weight-normalised last layer (True is
            more stable; the "boosted" recipe uses False).
        student_temp: student softmax temperature (0.1).
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_epochs: teacher temperature
            schedule (0.04 constant by default; 0.04 → 0.07 over 30 epochs when boosted).
        center_momentum: EMA momentum of the teacher centre (0.9).
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0
    center_momentum: float = 0.9

    # The config section these fields live in (subclasses such as SelfPatch's change it, so
    # that error messages name the key the user wrote).
    section: ClassVar[str] = "dino"

    def __post_init__(self) -> None:
        if self.out_dim < 2:
            raise ValueError(f"{self.section}.out_dim must be >= 2, got {self.out_dim}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.section}.{name} must be > 0, got {getattr(self, name)}")


def dino_head(params: DINOParams, in_dim: int, out_dim: int | None = None) -> DINOHead:
    """DINO's projection head sized by ``params`` (``out_dim`` defaults to ``params.out_dim``)."""
    return DINOHead(
        in_dim,
        params.out_dim if out_dim is None else out_dim,
        hidden_dim=params.hidden_dim,
        bottleneck_dim=params.bottleneck_dim,
        use_bn=params.use_bn_in_head,
        norm_last_layer=params.norm_last_layer,
    )


def teacher_temperature(params: DINOParams, info: StepInfo) -> float:
    """τt at this step: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_epochs`` (counted in steps), then constant."""
    warmup_steps = round(params.warmup_teacher_temp_epochs * info.steps_per_epoch)
    return linear_warmup_constant(
        info.step, warmup_steps, params.warmup_teacher_temp, params.teacher_temp
    )


@register_method
class DINO(Method):
    """DINO (see the module docstring)."""

    name = "dino"
    description = "image-level self-distillation with an EMA teacher (baseline)"
    paper = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021"
    Params = DINOParams

    def __init__(self, params: DINOParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__(params, backbone, views)
        if not backbone.cls_token:
            raise ValueError("dino needs a backbone with a CLS token (backbone.cls_token=true)")
        student_backbone = build_backbone(backbone)
        head = dino_head(params, student_backbone.embed_dim)
        self.student = StudentTeacher(student_backbone, head)
        self.teacher = make_teacher(self.student, backbone)
        self.dino_loss = DINOLoss(params.out_dim, params.student_temp, params.center_momentum)

    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    def teacher_temperature(self, info: StepInfo) -> float:
        return teacher_temperature(self.params, info)

    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        crops: list[Tensor] = batch["crops"]
        num_global = self.views_config.num_global
        temperature = self.teacher_temperature(info)
        with torch.no_grad():
            teacher_logits, teacher_patches = self.teacher.forward_views(crops[:num_global])
        student_logits, _ = self.student.forward_views(crops)
        loss = self.dino_loss(student_logits, teacher_logits, temperature)
        diagnostics = self.dino_loss.diagnostics(teacher_logits, temperature)
        self.dino_loss.update_center(teacher_logits)
        with torch.no_grad():
            patches = F.normalize(teacher_patches.flatten(1, 2).float(), dim=-1)
            patch_std = patches.std(dim=(0, 1)).mean()
        return {
            "loss": loss,
            "teacher_temp": torch.tensor(temperature),  # CPU: a device copy would sync
            "patch_std": patch_std,
            **diagnostics,
        }
