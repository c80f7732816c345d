"""LOCA: location-aware self-supervised transformers (reference-position prediction).

Caron, Houlsby and Schmid, "Location-Aware Self-Supervised Transformers for Semantic
Segmentation", WACV 2024 (arXiv 2212.02400); official JAX code google-research/scenic
@4a38d475 ``scenic/projects/loca`` (``trainer.py``, ``vit.py``, ``utils.py``, ``ops.py``,
``configs/loca_imnet1k_base16.py``). Crop 0 is the **reference** (never flipped), crop 1 the
**random query**, crops 2.. the **focal queries** (:mod:`densessl.data.views.multicrop`).

One step, b images, D channels, N = reference tokens, K prototypes, F focal queries::

    X_r = f_t(reference)                    [b, N, D]    EMA teacher, no grad, all tokens
    Z_r = g_t(X_r)                          [b, N, K]    teacher head (cosine scores)
    R   = X_r[:, keep_r]                    [b, n_r, D]  mask: n_r = floor((1−ratio)·N),
                                                         consecutive in raster order
    X_0 = f_s(query0 tokens[keep_0])        [b, n_0, D]  random query: n_0 tokens kept
                                                         after patch + position embedding
    X_f = f_s(focal queries)                [F·b, n_f, D]
    L_0 = Pred(X_0, R), L_f = Pred(X_f, R)  [·, ·, N]    cross-attention → N positions
    y   = reference position of each query patch from the boxes (−1 outside)
    loss = LOCALoss(L, y, g_s(X_0 ∪ X_f), Z_r)                     (densessl.methods.loca.loss)

Paper vs official code, and the option choosing (default: the code, unless said):

* blur: ``paper.yaml`` blurs as intended; ``views.photometric.blur_prob=[0,0,0]`` is the code;
* ``loca.masks_per_image``: masks per image instead of one per step;
* ``loca.teacher_drop_path``: the teacher with the student's stochastic depth (true);
* ``loca.query_pos_embed``: null follows ``loca.cluster_loss``; ``loca.cluster_loss=false``
  is the position-only arXiv-v1 model;
* ``loca.label_rule``: ``official`` index maps or ``centre`` (exact patch centre);
* ``backbone.act_layer``: ``gelu_tanh`` (the presets; Flax's ``nn.gelu`` in the code's
  backbone, projection head and position predictor) or ``gelu`` (exact, erf).

Details (also augmentation, clipping, init, distributed): docs/methods/loca.md
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.views.multicrop import ViewsConfig
from densessl.methods.base import Method, StepInfo, register_method
from densessl.methods.loca.decoder import PositionPredictor
from densessl.methods.loca.loss import LOCALoss
from densessl.methods.loca.positions import (
    LABEL_RULES,
    SELECTIONS,
    kept_token_indices,
    keyed_token_indices,
    loca_position_labels,
)
from densessl.methods.student_teacher import StudentTeacher
from densessl.models.heads import DINOHead
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.distributed import all_reduce_sum

__all__ = ["LOCA", "LOCAParams"]

#: Salts of the per-image keyed masks (reference, random query) and of the step generator.
_SALT_REFERENCE = 0x4C4F_4341
_SALT_QUERY = 0x4C4F_4342
_SALT_STEP = 0x4C4F_4343


@dataclass
class LOCAParams:
    """LOCA hyper-parameters (defaults: the official ViT-B/16 config, used by the paper).

    Attributes:
        out_dim: K, prototypes of the clustering head (4096).
        hidden_dim / bottleneck_dim: head MLP width (2048) and L2-normalised bottleneck (256).
        student_temp: τ_s on the query patches' cluster logits (0.1).
        sharpening: temperature of the teacher softmax before Sinkhorn (0.05); lower gives
            harder pseudo-labels.
        sinkhorn_iterations: balancing iterations on the teacher assignments (3).
        position_weight / cluster_weight / me_max_weight: weights of the position loss, of
            the clustering loss and of the me-max term inside it (1, 1, 1 officially).
        cluster_loss: add the patch-clustering objective with its EMA teacher (the
            published model); false is the position-only arXiv-v1 model (see the module
            docstring).
        query_pos_embed: add position embeddings to the query patches; None follows
            ``cluster_loss`` as the official code does.
        reference_mask_ratio: fraction of the reference tokens hidden from the queries
            (0.8: 39 of 196 stay visible). Larger makes the task harder.
        reference_mask: which tokens stay visible: ``consecutive`` (a raster-order run,
            official), ``unstructured`` (random) or ``first``.
        query_keep_ratio: fraction of the random query's tokens encoded (70/196 officially;
            ``round(ratio · N)`` tokens).
        masks_per_image: draw the masks per image instead of once per step (official).
        label_rule: ``official`` (the code's index maps) or ``centre`` (exact patch centre).
        teacher_drop_path: the teacher uses the student's stochastic depth (official).
    """

    section: ClassVar[str] = "loca"

    out_dim: int = 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    sharpening: float = 0.05
    sinkhorn_iterations: int = 3
    position_weight: float = 1.0
    cluster_weight: float = 1.0
    me_max_weight: float = 1.0
    cluster_loss: bool = True
    query_pos_embed: bool | None = None
    reference_mask_ratio: float = 0.8
    reference_mask: str = "consecutive"
    query_keep_ratio: float = 70 / 196
    masks_per_image: bool = False
    label_rule: str = "official"
    teacher_drop_path: bool = True

    def __post_init__(self) -> None:
        if self.out_dim < 2:
            raise ValueError(f"loca.out_dim must be >= 2, got {self.out_dim}")
        for name in ("student_temp", "sharpening"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loca.{name} must be > 0, got {getattr(self, name)}")
        for name in ("position_weight", "cluster_weight", "me_max_weight", "sinkhorn_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"loca.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.reference_mask_ratio < 1:
            raise ValueError(
                f"loca.reference_mask_ratio must be in [0, 1), got {self.reference_mask_ratio}"
            )
        if not 0 < self.query_keep_ratio <= 1:
            raise ValueError(
                f"loca.query_keep_ratio must be in (0, 1], got {self.query_keep_ratio}"
            )
        if self.reference_mask not in SELECTIONS:
            raise ValueError(f"loca.reference_mask must be one of {SELECTIONS}")
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"loca.label_rule must be one of {LABEL_RULES}")

    @property
    def use_query_pos_embed(self) -> bool:
        return self.cluster_loss if self.query_pos_embed is None else self.query_pos_embed

    def reference_kept(self, num_tokens: int) -> int:
        """Visible reference tokens: ``floor((1 − ratio) · N)`` (official ``int(0.2 · N)``)."""
        return max(1, int((1.0 - self.reference_mask_ratio) * num_tokens + 1e-6))

    def query_kept(self, num_tokens: int) -> int:
        """Encoded random-query tokens: ``round(ratio · N)`` (70 of 196 officially)."""
        return min(num_tokens, max(1, round(self.query_keep_ratio * num_tokens)))


def _gather(tokens: Tensor, keep: Tensor) -> Tensor:
    """``tokens [B, N, D]`` at ``keep [n]`` (shared) or ``[B, n]`` → ``[B, n, D]``."""
    if keep.dim() == 1:
        return tokens[:, keep]
    return torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _flat_heads(head: nn.Module, tokens: Tensor) -> Tensor:
    return head(tokens.reshape(-1, tokens.shape[-1]))


def _spread(rows: list[Tensor]) -> list[Tensor]:
    """Mean over channels of the per-channel std (unbiased) of each ``[n_i, D]`` row set,
    taken over the rows of every process (two all-reduces for all sets together)."""
    counts = torch.stack([rows[0].new_tensor(float(r.shape[0])) for r in rows])
    sums = all_reduce_sum(torch.cat([torch.stack([r.sum(0) for r in rows]), counts[:, None]], 1))
    means, counts = sums[:, :-1] / sums[:, -1:], sums[:, -1:]
    squares = all_reduce_sum(
        torch.stack([(r - m).pow(2).sum(0) for r, m in zip(rows, means, strict=True)])
    )
    return list((squares / (counts - 1).clamp_min(1.0)).sqrt().mean(dim=1).unbind())


@register_method
class LOCA(Method):
    """LOCA (see the module docstring)."""

    name = "loca"
    description = (
        "query patches predict their position in a masked reference view, plus patch-level "
        "clustering against an EMA teacher"
    )
    paper = (
        "Caron, Houlsby and Schmid, Location-Aware Self-Supervised Transformers for "
        "Semantic Segmentation, WACV 2024"
    )
    Params = LOCAParams
    needs_cls_token = False

    def __init__(self, params: LOCAParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__(params, backbone, views)
        self._check_config(backbone, views)
        student_backbone = build_backbone(backbone)
        dim = student_backbone.embed_dim
        pos_embed = getattr(student_backbone.model, "pos_embed", None)
        if pos_embed is not None:  # rotary families (dinov3) have no table
            with torch.no_grad():  # the official init N(0, 1/D) (timm: truncated, std 0.02)
                pos_embed.normal_(0.0, dim**-0.5)
        side = views.global_size // backbone.patch_size
        self.reference_grid = (side, side)
        self.num_positions = side * side
        # The head and the position predictor use the backbone's GELU: Flax's tanh
        # approximation in the official code (``backbone.act_layer=gelu_tanh``, the presets).
        gelu = "tanh" if backbone.act_layer == "gelu_tanh" else "none"
        head = DINOHead(
            dim,
            params.out_dim,
            params.hidden_dim,
            params.bottleneck_dim,
            norm_last_layer=True,
            gelu=gelu,
        )
        self.student = StudentTeacher(student_backbone, head)
        self.predictor = PositionPredictor(
            dim, student_backbone.num_heads, 4 * dim, self.num_positions, gelu
        )
        teacher_config = (
            backbone if params.teacher_drop_path else replace(backbone, drop_path_rate=0.0)
        )
        teacher_backbone = build_backbone(teacher_config)
        teacher_backbone.load_state_dict(student_backbone.state_dict())
        self.teacher = StudentTeacher(teacher_backbone, copy.deepcopy(head))
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        # The train seed: the trainer seeds the global RNG with it (the same on every
        # process) right before building the method. Batch-level masks come from a
        # generator seeded by (this, step), identical on every process (docs/methods/loca.md).
        self.seed = torch.initial_seed()
        self.loca_loss = LOCALoss(
            self.num_positions,
            student_temp=params.student_temp,
            sharpening=params.sharpening,
            sinkhorn_iterations=params.sinkhorn_iterations,
            position_weight=params.position_weight,
            cluster_weight=params.cluster_weight,
            me_max_weight=params.me_max_weight,
        )

    @staticmethod
    def _check_config(backbone: BackboneConfig, views: ViewsConfig) -> None:
        if backbone.cls_token or not backbone.final_norm:
            raise ValueError(
                "loca needs a backbone without CLS token and with its final LayerNorm: set "
                "backbone.cls_token=false backbone.final_norm=true"
            )
        if views.num_global != 2:
            raise ValueError(
                "loca needs views.num_global=2 (the reference and the random query); the "
                "focal queries are the local views"
            )
        for key, size in (("global_size", views.global_size), ("local_size", views.local_size)):
            if size % backbone.patch_size:
                raise ValueError(
                    f"loca: views.{key}={size} is not a multiple of the patch size "
                    f"{backbone.patch_size}"
                )

    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    # ------------------------------------------------------------------ labels
    def labels(self, batch: dict[str, Any], view: int) -> Tensor:
        """Reference positions ``[B, h*w]`` of every patch of query view ``view`` (≥ 1)."""
        crop = batch["crops"][view]
        size = (int(crop.shape[-2]), int(crop.shape[-1]))
        grid = self.student.backbone.grid_size(*size)
        boxes, flips = batch["boxes"], batch["flips"]
        return loca_position_labels(
            boxes[:, view], size, grid, boxes[:, 0], self.reference_grid,
            flips[:, view], flips[:, 0], rule=self.params.label_rule,
        )  # fmt: skip

    # ------------------------------------------------------------------ the step
    def step_generator(self, step: int) -> torch.Generator:
        """CPU generator of the batch-level draws of ``step``: a function of the train seed
        and the step only, so every process (and a resume) draws the same masks."""
        mixed = ((self.seed * 1_000_003 + step) * 0x9E37_79B9_7F4A_7C15 + _SALT_STEP) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def _keep(
        self,
        num_tokens: int,
        num_kept: int,
        selection: str,
        batch: int,
        keys: Tensor | None,
        salt: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Kept token indices: one set for the batch (``[n]``, official) from ``generator``,
        or per image (``[b, n]``, ``loca.masks_per_image``) from the sample keys (from
        ``generator`` for hand-made batches without keys)."""
        if not self.params.masks_per_image:
            return kept_token_indices(num_tokens, num_kept, selection, generator=generator)
        if keys is not None:
            return keyed_token_indices(num_tokens, num_kept, selection, keys, salt)
        return kept_token_indices(num_tokens, num_kept, selection, batch, generator=generator)

    def _reference(self, reference: Tensor, keep: Tensor) -> tuple[Tensor, Tensor | None]:
        """Visible reference tokens ``[b, n_r, D]`` and teacher cluster logits ``[b, N, K]``."""
        if not self.params.cluster_loss:  # v1: student, tokens dropped before the encoder
            return self.student.backbone.encode(reference, keep), None
        with torch.no_grad():
            tokens = self.teacher.backbone.encode(reference)
            logits = _flat_heads(self.teacher.head, tokens)
        return _gather(tokens, keep.to(tokens.device)), logits.reshape(*tokens.shape[:2], -1)

    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        p = self.params
        crops: list[Tensor] = batch["crops"]
        reference, query0, focal = crops[0], crops[1], crops[2:]
        b = reference.shape[0]
        grid = self.student.backbone.grid_size(*reference.shape[-2:])
        if grid != self.reference_grid:
            raise ValueError(f"reference crops give a {grid} grid, expected {self.reference_grid}")
        keys: Tensor | None = batch.get("key")  # per-image masks (densessl.ops.keyed_random)
        generator = self.step_generator(info.step)
        n_ref = self.num_positions
        keep_r = self._keep(
            n_ref, p.reference_kept(n_ref), p.reference_mask, b, keys, _SALT_REFERENCE, generator
        )
        visible, teacher_logits = self._reference(reference, keep_r)
        use_pe = p.use_query_pos_embed

        q_rows, q_cols = self.student.backbone.grid_size(*query0.shape[-2:])
        n_q0 = q_rows * q_cols
        keep_0 = self._keep(
            n_q0, p.query_kept(n_q0), "unstructured", b, keys, _SALT_QUERY, generator
        )
        tokens = [self.student.backbone.encode(query0, keep_0, pos_embed=use_pe)]
        labels = [_gather(self.labels(batch, 1).unsqueeze(-1), keep_0.to(reference.device))]
        logits = [self.predictor(tokens[0], visible)]
        if focal:
            stacked = torch.cat(focal)  # [F·b, 3, s, s], view-major like the official batch
            tokens.append(self.student.backbone.encode(stacked, pos_embed=use_pe))
            logits.append(self.predictor(tokens[1], visible.repeat(len(focal), 1, 1)))
            labels.append(torch.cat([self.labels(batch, v) for v in range(2, len(crops))]))
        # rows: query0 image-major, then focal view-major / image / token (official order)
        position_logits = torch.cat([x.reshape(-1, n_ref) for x in logits])
        flat_labels = torch.cat([y.reshape(-1) for y in labels])
        row_image = torch.cat(
            [torch.arange(b, device=reference.device).repeat_interleave(t.shape[1]).repeat(
                t.shape[0] // b) for t in tokens]
        )  # fmt: skip
        student_logits = None
        if p.cluster_loss:
            student_logits = torch.cat([_flat_heads(self.student.head, t) for t in tokens])
        out = self.loca_loss(
            position_logits, flat_labels, student_logits, teacher_logits, row_image
        )
        return {**out, **self._diagnostics(tokens, visible)}

    @torch.no_grad()
    def _diagnostics(self, tokens: list[Tensor], visible: Tensor) -> dict[str, Tensor]:
        """Spread of the L2-normalised query and reference tokens over the batch (→ 0 when
        every patch looks alike) and the chance level of the position task (1/N)."""
        queries = F.normalize(torch.cat([t.flatten(0, 1) for t in tokens]).float(), dim=-1)
        reference = F.normalize(visible.flatten(0, 1).float(), dim=-1)
        patch_std, query_std = _spread([reference, queries])  # over every process's rows
        return {
            "patch_std": patch_std,
            "query_std": query_std,
            "position_chance": torch.tensor(1.0 / self.num_positions, device=visible.device),
        }
