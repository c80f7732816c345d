"""A backbone with a head on its CLS token, and DINO's EMA teacher built from it.

Every method with an image-level DINO head (DINO, SelfPatch, FLSL) and the ones that only
need an EMA copy (Leopart, LOCA) build their networks from these two pieces.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TypeVar

import torch
from torch import Tensor, nn

from densessl.data.views.multicrop import group_by_resolution
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone


class StudentTeacher(nn.Module):
    """A backbone with a head on its CLS token."""

    def __init__(self, backbone: ViTBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_views(self, crops: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Head logits per view ``[B, K]`` and the patch tokens of the first resolution."""
        batch = crops[0].shape[0]
        cls_tokens, first_patches = [], None
        for _, stacked in group_by_resolution(crops):
            cls, patches = self.backbone.tokens(stacked)
            cls_tokens.append(cls)
            if first_patches is None:
                first_patches = patches
        logits = self.head(torch.cat(cls_tokens))
        assert first_patches is not None
        return list(logits.split(batch)), first_patches


_Network = TypeVar("_Network", bound=StudentTeacher)


def make_teacher(student: _Network, backbone_config: BackboneConfig) -> _Network:
    """A frozen copy of the student without drop-path (DINO's teacher).

    The copy has the student's class (subclasses of :class:`StudentTeacher`, e.g.
    SelfPatch's network, get a teacher of their own kind) and no ``requires_grad``.
    """
    teacher_backbone = build_backbone(replace(backbone_config, drop_path_rate=0.0))
    teacher_backbone.load_state_dict(student.backbone.state_dict())
    teacher = type(student)(teacher_backbone, copy.deepcopy(student.head))
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class LaggedEMA:
    """The official Leopart/NeCo EMA order (``teacher_lag``): the teacher moves towards the
    student of *before* the optimiser step. :meth:`take` snapshots the student in the loss;
    :meth:`update` then applies the EMA towards that snapshot (and forgets it)."""

    def __init__(self) -> None:
        self._student: list[Tensor] | None = None

    def take(self, student: nn.Module) -> None:
        self._student = [p.detach().clone() for p in student.parameters()]

    @torch.no_grad()
    def update(self, teacher: nn.Module, momentum: float) -> bool:
        """``teacher <- momentum * teacher + (1 - momentum) * snapshot``; False (nothing done)
        without a snapshot, for the caller's ordinary EMA."""
        if self._student is None:
            return False
        params = list(teacher.parameters())
        torch._foreach_mul_(params, momentum)
        torch._foreach_add_(params, self._student, alpha=1 - momentum)
        self._student = None
        return True
