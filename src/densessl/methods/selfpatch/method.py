"""SelfPatch: DINO plus patch-level invariance to similar neighbours.

Yun et al., "Patch-level Representation Learning for Self-supervised Vision Transformers",
CVPR 2022; official code alinlab/SelfPatch @81aef149 (``main_selfpatch.py``,
``selfpatch_vision_transformer.py``). Everything image-level is DINO
(:mod:`densessl.methods.dino.method`). Each patch also predicts the teacher's aggregate of its
k most similar neighbours (:mod:`densessl.methods.selfpatch.aggregation`), in the same view:
``L = L_img + patch_loss_weight · L_patch`` (0.1), the patch loss with its own centre.

Network (student and EMA teacher alike)::

    crops ─► ViT (no [CLS], no final norm) ─► patches [B, h, w, D]
          ─► class-attention head (learned class token, 2 CA blocks, LayerNorm)
               image token [B, D]  ─► image DINO head  ─► [B, K]      (K = out_dim)
               patch tokens [B, N, D] ─► patch DINO head ─► [B, N, Kp] (Kp = patch_out_dim)

Where the official code and the paper (or DINO) differ, and the option choosing:

* ``selfpatch.border``: ``"clip"`` (default, the paper's adjacent patches) or ``"wrap"``
  (the code's torus);
* ``selfpatch.teacher_views``: ``"all"`` (default, code: locals too) or ``"global"`` (DINO);
* ``selfpatch.image_center_views``: ``"all"`` (default, code) or ``"global"`` (DINO);
* ``selfpatch.num_ca_blocks`` / ``selfpatch.patch_loss_weight``: hard-coded 2 / 0.1 upstream.

The exported backbone is the teacher's (patch tokens without a final norm).

Details: docs/methods/selfpatch.md
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
from densessl.methods.dino.method import DINOParams, dino_head, teacher_temperature
from densessl.methods.selfpatch.aggregation import (
    BORDER_MODES,
    ClassAttentionHead,
    NeighbourSelection,
)
from densessl.methods.selfpatch.loss import VIEW_CHOICES, SelfPatchLoss
from densessl.methods.student_teacher import StudentTeacher, make_teacher
from densessl.models.heads import DINOHead
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone

__all__ = ["SelfPatch", "SelfPatchHeads", "SelfPatchLoss", "SelfPatchNetwork", "SelfPatchParams"]


@dataclass
class SelfPatchParams(DINOParams):
    """SelfPatch hyper-parameters: DINO's (image level) plus the patch level.

    Defaults are the official ViT-S/16 recipe. The DINO fields (``out_dim``, ``hidden_dim``,
    ``bottleneck_dim``, ``use_bn_in_head``, ``norm_last_layer``, temperatures,
    ``center_momentum``) mean what they mean for DINO; the two heads share ``hidden_dim``,
    ``bottleneck_dim``, ``use_bn_in_head`` and ``norm_last_layer``, and both centres use
    ``center_momentum``, as in the official code.

    Attributes:
        patch_out_dim: prototypes Kp of the patch head (4096; 256-1024 for tiny runs).
        num_neighbours: positives k per patch among its 8 neighbours (4).
        border: ``"clip"`` (adjacent patches inside the grid; default) or ``"wrap"``
            (the official code's torus).
        patch_loss_weight: λ of ``L_img + λ·L_patch`` (0.1).
        num_ca_blocks: class-attention blocks of the head (2).
        teacher_views: ``"all"`` (official: the teacher also sees the local crops and the
            patch loss covers them) or ``"global"`` (DINO's teacher views only).
        image_center_views: ``"all"`` (official: the image centre averages every teacher
            view) or ``"global"`` (DINO: the global views only).
    """

    section: ClassVar[str] = "selfpatch"

    patch_out_dim: int = 4096
    num_neighbours: int = 4
    border: str = "clip"
    patch_loss_weight: float = 0.1
    num_ca_blocks: int = 2
    teacher_views: str = "all"
    image_center_views: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_out_dim < 2:
            raise ValueError(f"selfpatch.patch_out_dim must be >= 2, got {self.patch_out_dim}")
        if not 1 <= self.num_neighbours <= 8:
            raise ValueError(
                f"selfpatch.num_neighbours must be between 1 and 8 (the 3x3 window), "
                f"got {self.num_neighbours}"
            )
        if self.border not in BORDER_MODES:
            raise ValueError(
                f"selfpatch.border must be one of {BORDER_MODES}, got {brief(self.border)}"
            )
        if self.patch_loss_weight < 0:
            raise ValueError(
                f"selfpatch.patch_loss_weight must be >= 0, got {self.patch_loss_weight}"
            )
        if self.num_ca_blocks < 1:
            raise ValueError(f"selfpatch.num_ca_blocks must be >= 1, got {self.num_ca_blocks}")
        for name in ("teacher_views", "image_center_views"):
            if getattr(self, name) not in VIEW_CHOICES:
                raise ValueError(
                    f"selfpatch.{name} must be one of {VIEW_CHOICES}, "
                    f"got {brief(getattr(self, name))}"
                )


class HeadLogits(NamedTuple):
    """Output of :class:`SelfPatchHeads`: ``image [B, K]``, ``patch [B, N, Kp]``, positives."""

    image: Tensor
    patch: Tensor
    selection: NeighbourSelection | None


class SelfPatchHeads(nn.Module):
    """Class-attention head followed by the image and the patch DINO heads.

    Args:
        aggregation: the :class:`~densessl.methods.selfpatch.aggregation.ClassAttentionHead`.
        image_head: DINO head on the image token, ``[B, D] → [B, K]``.
        patch_head: DINO head on the patch tokens, ``[B, N, D] → [B, N, Kp]``.

    Both DINO heads name their weight-normalised layer ``last_layer``, so the trainer freezes
    both during the first epoch(s), as the official code does.
    """

    def __init__(
        self, aggregation: ClassAttentionHead, image_head: DINOHead, patch_head: DINOHead
    ) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.image_head = image_head
        self.patch_head = patch_head

    def forward(self, patches: Tensor, aggregate: bool) -> HeadLogits:
        """``patches [B, h, w, D]`` → image logits ``[B, K]`` and patch logits ``[B, h*w, Kp]``.

        ``aggregate=True`` (teacher) predicts from each patch's aggregated positives,
        ``False`` (student) from the patch itself.
        """
        out = self.aggregation(patches, aggregate)
        return HeadLogits(self.image_head(out.image), self.patch_head(out.tokens), out.selection)


class ViewLogits(NamedTuple):
    """Per-view outputs of :meth:`SelfPatchNetwork.forward_views`.

    Attributes:
        image: one ``[B, K]`` tensor per view.
        patch: one ``[B, N_v, Kp]`` tensor per view (N_v tokens of that view's grid).
        first_patches: backbone tokens ``[n*B, h, w, D]`` of the first resolution's views.
        first_selection: positives of the first resolution's views (teacher) or None.
    """

    image: list[Tensor]
    patch: list[Tensor]
    first_patches: Tensor
    first_selection: NeighbourSelection | None


class SelfPatchNetwork(StudentTeacher):
    """A SelfPatch backbone (no [CLS], no final norm) with :class:`SelfPatchHeads`."""

    head: SelfPatchHeads

    def forward_views(  # type: ignore[override]
        self, crops: Sequence[Tensor], aggregate: bool = False
    ) -> ViewLogits:
        """Logits of every view; one backbone and head call per resolution.

        Args:
            crops: views ``[B, 3, s_v, s_v]`` (consecutive views of one size are batched).
            aggregate: teacher mode (patch logits of aggregated positives).
        """
        batch = crops[0].shape[0]
        image: list[Tensor] = []
        patch: list[Tensor] = []
        first_patches: Tensor | None = None
        first_selection: NeighbourSelection | None = None
        for _, stacked in group_by_resolution(list(crops)):
            _, patches = self.backbone.tokens(stacked)
            logits = self.head(patches, aggregate)
            image.extend(logits.image.split(batch))
            patch.extend(logits.patch.split(batch))
            if first_patches is None:
                first_patches, first_selection = patches, logits.selection
        assert first_patches is not None
        return ViewLogits(image, patch, first_patches, first_selection)


@register_method
class SelfPatch(Method):
    """SelfPatch (see the module docstring)."""

    name = "selfpatch"
    description = "DINO + same-view patch loss towards each patch's top-k similar neighbours"
    paper = (
        "Yun et al., Patch-level Representation Learning for Self-supervised Vision "
        "Transformers, CVPR 2022"
    )
    Params = SelfPatchParams
    needs_cls_token = False

    def __init__(
        self, params: SelfPatchParams, backbone: BackboneConfig, views: ViewsConfig
    ) -> None:
        super().__init__(params, backbone, views)
        if backbone.cls_token or backbone.final_norm:
            raise ValueError(
                "selfpatch needs a backbone without CLS token and without final norm (the "
                "class-attention head makes the image token and holds the norm): set "
                "backbone.cls_token=false backbone.final_norm=false"
            )
        self._check_grids(backbone, views, params)
        student_backbone = build_backbone(backbone)
        dim = student_backbone.embed_dim

        heads = SelfPatchHeads(
            ClassAttentionHead(
                dim,
                student_backbone.num_heads,
                num_neighbours=params.num_neighbours,
                border=params.border,
                num_blocks=params.num_ca_blocks,
            ),
            dino_head(params, dim),
            dino_head(params, dim, params.patch_out_dim),
        )
        self.student = SelfPatchNetwork(student_backbone, heads)
        self.teacher = make_teacher(self.student, backbone)
        self.selfpatch_loss = SelfPatchLoss(
            params.out_dim,
            params.patch_out_dim,
            views.num_global,
            patch_loss_weight=params.patch_loss_weight,
            student_temp=params.student_temp,
            center_momentum=params.center_momentum,
            image_center_views=params.image_center_views,
        )

    @staticmethod
    def _check_grids(backbone: BackboneConfig, views: ViewsConfig, params: SelfPatchParams) -> None:
        sizes = {"views.global_size": views.global_size}
        if params.teacher_views == "all" and views.num_local > 0:
            sizes["views.local_size"] = views.local_size
        for key, size in sizes.items():
            if size // backbone.patch_size < 3:
                raise ValueError(
                    f"selfpatch needs token grids of at least 3x3 for the teacher's neighbour "
                    f"search: {key}={size} with patch_size {backbone.patch_size} gives "
                    f"{size // backbone.patch_size}x{size // backbone.patch_size}; use larger "
                    "crops, a smaller patch size, or selfpatch.teacher_views=global"
                )

    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        crops: list[Tensor] = batch["crops"]
        num_global = self.views_config.num_global
        temperature = teacher_temperature(self.params, info)
        teacher_crops = crops if self.params.teacher_views == "all" else crops[:num_global]
        with torch.no_grad():
            teacher = self.teacher.forward_views(teacher_crops, aggregate=True)
        student = self.student.forward_views(crops, aggregate=False)
        terms = self.selfpatch_loss(
            student.image, student.patch, teacher.image, teacher.patch, temperature
        )
        diagnostics = self._diagnostics(teacher, temperature, num_global)
        self.selfpatch_loss.update_centers(teacher.image, teacher.patch)
        return {
            **terms,
            "teacher_temp": torch.tensor(temperature),  # CPU: a device copy would sync
            **diagnostics,
        }

    @torch.no_grad()
    def _diagnostics(
        self, teacher: ViewLogits, temperature: float, num_global: int
    ) -> dict[str, Tensor]:
        """Collapse and matching diagnostics (local batch, no host sync).

        * image level: :meth:`~densessl.methods.dino.loss.DINOLoss.diagnostics` of the global views
          (DINO's names);
        * patch level: the same on the first view's patch logits (at most 4096 tokens,
          strided), prefixed ``patch_``;
        * ``patch_std``: spread of the teacher's L2-normalised backbone tokens (→ 0 when
          every patch looks alike);
        * ``positive_cos`` / ``neighbour_cos``: mean cosine similarity of the chosen
          positives / of all candidates inside the grid (positives should be the higher).
        """
        loss = self.selfpatch_loss
        out = loss.image_loss.diagnostics(teacher.image[:num_global], temperature)
        rows = teacher.patch[0].reshape(-1, teacher.patch[0].shape[-1])
        rows = rows[:: max(1, rows.shape[0] // 4096)]
        patch = loss.patch_loss.diagnostics(rows, temperature)
        out.update({f"patch_{name}": value for name, value in patch.items()})
        tokens = F.normalize(teacher.first_patches.flatten(1, 2).float(), dim=-1)
        out["patch_std"] = tokens.std(dim=(0, 1)).mean()
        selection = teacher.first_selection
        if selection is not None:
            out["positive_cos"] = _masked_mean(selection.similarity, selection.valid)
            candidates = selection.candidate_similarity
            out["neighbour_cos"] = _masked_mean(candidates, torch.isfinite(candidates))
        return out


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` where ``keep`` (boolean indexing would sync with the device)."""
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return total / keep.sum().clamp_min(1)
