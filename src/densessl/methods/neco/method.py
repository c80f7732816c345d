"""NeCo: patch-neighbour ordering consistency, a post-training stage for ViTs.

Pariza, Salehi, Sharma, Asano et al., "Near, far: Patch-ordering enhances vision foundation
models' scene understanding", ICLR 2025; official code vpariza/NeCo @3932160 (``src/neco.py``,
``src/neco_transforms.py``, ``experiments/configs/models/small/neco_dino.yml``; sorting by
PyPI ``diffsort==0.2.0``). Post-trains a pretrained ViT (``--init``, e.g. DINO ViT-S/16) with
Leopart's pipeline (multi-crop with overlapping crops, RoI-aligned crop intersections, an EMA
teacher) and a new objective: every patch's similarities to a set of reference patches are
sorted by a differentiable sorting network, and the student's soft permutation matrices are
trained to match the teacher's (:class:`densessl.methods.neco.loss.NeCoLoss`).

Network (student, and an EMA teacher without drop-path)::

    crops ─► ViT ─► patches [B, h, w, D] ─► MLP (D→2048→2048→256, GELU, no norm) ─► L2-norm
          ─► embeddings z [B, 256, h, w] ─► NeCoLoss (RoI-Align 7x7, 49 references,
             bitonic network on 49 wires, Cauchy comparators, steepness 100)

The CLS token is not used (the backbone may have one or not).

Where the paper and the official code differ, the default is the code's (these are what the
published numbers were trained with); options select the other reading:

* ``neco.independent_teacher_head=true`` (code): the teacher's projection head starts from
  its own random init (the official weights loader drops every "head" key and nothing
  copies the student's); ``false`` copies the student's, as DINO and Leopart's paper do;
* ``neco.teacher_lag=true`` (code): the EMA step runs inside the loss closure, before the
  optimiser step, so the teacher follows the student of the previous step;
* references are the *teacher's* aligned patches of the current batch (own image included),
  where the project page speaks of the student's features of other images; not an option;
* with ``neco.queue_length > 0`` (the DINOv2 configs' ``is_queue_usable``) they are drawn
  from a FIFO of the teacher's patches that already holds the current batch
  (:mod:`densessl.methods.neco.queue`); ``neco.queue_draw="official"`` (code) keeps the
  code's counter shared by both crops, so the first steps draw all-zero rows; ``"filled"``
  draws only rows the queue holds.

The ``fg``/``bg`` loss masks are not offered yet; see docs/methods/neco.md. Details there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densessl.data.views.multicrop import ViewsConfig, group_by_resolution
from densessl.errors import brief
from densessl.methods.base import Method, StepInfo, register_method
from densessl.methods.neco.loss import SIMILARITIES, NeCoLoss
from densessl.methods.neco.queue import QUEUE_DRAWS, ReferenceQueue
from densessl.methods.neco.sorting import DISTRIBUTIONS, NETWORKS
from densessl.methods.student_teacher import LaggedEMA, StudentTeacher, make_teacher
from densessl.models.heads import MLPProjection
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone

__all__ = ["NeCo", "NeCoNetwork", "NeCoParams"]


@dataclass
class NeCoParams:
    """NeCo hyper-parameters (defaults: the official DINO ViT-S/16 recipe, ``neco_dino.yml``).

    Attributes:
        projection_dim: size of the L2-normalised patch embedding the loss sorts (256).
        hidden_dim: hidden width of the projection MLP (2048).
        num_layers: linear layers of the projection MLP (3).
        roi_align_size: o, the side of the grid crop intersections are aligned on; each
            image has o² queries and o² references (7, so 49).
        student_steepness: steepness of the student's sorting network (100; the code
            default is 5, every released config sets 100).
        teacher_steepness: steepness of the teacher's (100).
        sort_network: ``"bitonic"`` (NeCo) or ``"odd_even"`` (the masked ablations).
        distribution: the comparators' relaxation: ``"cauchy"`` (``diffsort``'s default,
            which NeCo uses), ``"logistic"``, ``"logistic_phi"``, ``"gaussian"``,
            ``"reciprocal"``.
        art_lambda: λ of ``logistic_phi`` (0.25; unused by the others).
        similarity: what is sorted: ``"cosine"`` (every config) or ``"euclidean"``.
        head_lr_scale: learning rate of the projection head relative to the backbone's
            ``optim.lr`` (10: 1e-4 vs 1e-5 in the configs).
        queue_length: teacher patches kept per global crop for the references (0 = no
            queue, references from the current batch as ``neco_dino.yml``; the DINOv2
            configs: 8192). The same whole queue on every process.
        queue_rows_per_image: rows pushed per step and global crop, per image of the
            (global) batch (10, the code's ``10·B``).
        queue_draw: ``"official"`` (the code's shared counter: zero rows until the queues
            fill, repeats) or ``"filled"`` (only rows the queue holds, distinct while it
            holds ``B·o²``).
        independent_teacher_head: the teacher head starts random, not copied (code: true).
        teacher_lag: EMA towards the student of before the optimiser step (code: true).
    """

    projection_dim: int = 256
    hidden_dim: int = 2048
    num_layers: int = 3
    roi_align_size: int = 7
    student_steepness: float = 100.0
    teacher_steepness: float = 100.0
    sort_network: str = "bitonic"
    distribution: str = "cauchy"
    art_lambda: float = 0.25
    similarity: str = "cosine"
    head_lr_scale: float = 10.0
    queue_length: int = 0
    queue_rows_per_image: int = 10
    queue_draw: str = "official"
    independent_teacher_head: bool = True
    teacher_lag: bool = True

    section: ClassVar[str] = "neco"

    def __post_init__(self) -> None:
        for name in ("projection_dim", "hidden_dim", "num_layers", "roi_align_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"neco.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("student_steepness", "teacher_steepness", "head_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"neco.{name} must be > 0, got {getattr(self, name)}")
        if self.queue_length < 0:
            raise ValueError(f"neco.queue_length must be >= 0, got {self.queue_length}")
        if self.queue_rows_per_image < 1:
            raise ValueError(
                f"neco.queue_rows_per_image must be >= 1, got {self.queue_rows_per_image}"
            )
        if self.art_lambda < 0:
            raise ValueError(f"neco.art_lambda must be >= 0, got {self.art_lambda}")
        for name, choices in (
            ("sort_network", NETWORKS),
            ("distribution", DISTRIBUTIONS),
            ("similarity", SIMILARITIES),
            ("queue_draw", QUEUE_DRAWS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"neco.{name} must be one of {choices}, got {brief(getattr(self, name))}"
                )


class NeCoNetwork(StudentTeacher):
    """A ViT backbone and an L2-normalised :class:`MLPProjection` on every patch token."""

    head: MLPProjection

    def embed_views(self, crops: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Per view ``[B, projection_dim, h, w]`` embeddings (channels first, for RoI-Align),
        and the backbone tokens ``[n·B, h, w, D]`` of the first resolution; one backbone and
        head call per resolution."""
        batch = crops[0].shape[0]
        embeddings: list[Tensor] = []
        first: Tensor | None = None
        for _, stacked in group_by_resolution(list(crops)):
            _, patches = self.backbone.tokens(stacked)
            embeddings.extend(self.head(patches).permute(0, 3, 1, 2).split(batch))
            if first is None:
                first = patches
        assert first is not None
        return embeddings, first


def _head(in_dim: int, params: NeCoParams) -> MLPProjection:
    return MLPProjection(
        in_dim, params.projection_dim, params.hidden_dim, params.num_layers, normalize=True
    )


@register_method
class NeCo(Method):
    """NeCo (see the module docstring)."""

    name = "neco"
    description = (
        "patch-neighbour ordering: the student's differentiable sorting (bitonic network) of "
        "each patch's similarities to reference patches matches the EMA teacher's, across "
        "RoI-aligned crops"
    )
    paper = (
        "Pariza, Salehi, Sharma, Asano et al., Near, far: Patch-ordering enhances vision "
        "foundation models' scene understanding, ICLR 2025"
    )
    Params = NeCoParams

    def __init__(self, params: NeCoParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__(params, backbone, views)
        student_backbone = build_backbone(backbone)
        self.student = NeCoNetwork(student_backbone, _head(student_backbone.embed_dim, params))
        self.teacher = make_teacher(self.student, backbone)
        if params.independent_teacher_head:
            self.teacher.head = _head(student_backbone.embed_dim, params).requires_grad_(False)
        self.criterion = NeCoLoss(
            params.roi_align_size,
            params.student_steepness,
            params.teacher_steepness,
            params.sort_network,
            params.distribution,
            params.art_lambda,
            params.similarity,
        )
        self.queue: ReferenceQueue | None = None
        if params.queue_length > 0:
            self.queue = ReferenceQueue(
                views.num_global,
                params.queue_length,
                params.projection_dim,
                params.queue_rows_per_image,
                params.queue_draw,
            )
        self._lag = LaggedEMA()

    # -- Method interface ----------------------------------------------------------------
    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    def lr_scale(self, parameter_name: str) -> float:
        """The projection head trains at ``head_lr_scale`` x the backbone's lr."""
        return self.params.head_lr_scale if parameter_name.startswith("student.head.") else 1.0

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA of the teacher; with ``teacher_lag`` towards the student of before the step."""
        if not self._lag.update(self.teacher, momentum):
            super().update_teacher(momentum)

    # -- the loss ------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        crops: list[Tensor] = batch["crops"]
        boxes: Tensor = batch["boxes"]
        flips: Tensor | None = batch.get("flips") if self.views_config.flip_prob > 0 else None
        if self.params.teacher_lag and self.training:
            self._lag.take(self.student)
        num_targets = self.views_config.num_global
        with torch.no_grad():
            teacher, teacher_tokens = self.teacher.embed_views(crops[:num_targets])
        keys: Tensor | None = batch.get("key")
        if self.queue is not None:  # before the loss: the batch is among the references
            for target, grid in enumerate(teacher):
                self.queue.push(target, grid, keys)
        student, _ = self.student.embed_views(crops)
        loss = self.criterion(teacher, student, boxes, keys=keys, flips=flips, queue=self.queue)
        return {"loss": loss, **self._diagnostics(teacher, student, teacher_tokens)}

    @torch.no_grad()
    def _diagnostics(
        self, teacher: list[Tensor], student: list[Tensor], tokens: Tensor
    ) -> dict[str, Tensor]:
        """Collapse diagnostics on the local batch, first global view (no host sync).

        * ``embedding_std``: spread of the teacher's unit embeddings over tokens (0 when
          every patch maps to one point);
        * ``teacher_student_cosine``: mean cosine of teacher and student embeddings of the
          same tokens of view 0;
        * ``patch_std``: spread of the teacher's L2-normalised backbone tokens;
        * ``queue_fill`` (with the queue): fraction of the first global crop's queue filled.
        """
        z_t = teacher[0].float().flatten(2)  # [B, d, h*w], unit columns
        z_s = student[0].float().flatten(2)
        flat = nn.functional.normalize(tokens.flatten(1, 2).float(), dim=-1)
        out = {
            "embedding_std": z_t.std(dim=(0, 2)).mean(),
            "teacher_student_cosine": (z_t * z_s).sum(dim=1).mean(),
            "patch_std": flat.std(dim=(0, 1)).mean(),
        }
        if self.queue is not None:
            out["queue_fill"] = self.queue.fill(0)
        return out
