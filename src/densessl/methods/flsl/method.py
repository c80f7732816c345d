"""FLSL: feature-level self-supervised learning (mean-shift + k-means on patch features).

Su, Netchaev, Li and Ji, "FLSL: Feature-level Self-supervised Learning", NeurIPS 2023
(arXiv 2306.06203); official code QingSuML/FLSL @acb5d6f (``main_flsl.py``, ``utils.py``,
``vision_transformer.py``). Crop 0 is the teacher view and every other crop is cut from
inside it (``views.nested=true``); a ViT without [CLS] with a fixed 2-D sin-cos position
table (``flsl.sincos_pos_embed``), DINO's head, an EMA teacher. One step, B images, D
channels, K prototypes::

    z_t = f_t(teacher view)                         [B, N_t, D]   no gradient
    for each student view v (views of one size share a backbone call):
        z_v = f_s(view v)                           [B, N_v, D]
        x   = z_v[sampled windows]                  [B, q_v, D]   densessl.methods.flsl.sampling
        m   = softmax(α_sa · x z_vᵀ) z_v            [B, q_v, D]   intra-view mode
        m⁺  = softmax(α_ca · x z_tᵀ) z_t            [B, q_v, D]   teacher positive (no grad)
    s = g_s(m), t = g_t(m⁺)                         [M, K], M = B · Σ_v q_v
    L = υ · L_ms(x, m) + η · L_km(s, t) + γ · KL(p̄ ‖ U)      (densessl.methods.flsl.loss)

Where paper, official code and this library differ:

* schedules: cosines from ``flsl.*_start``, where 0.0 means 0.0 (the code ignores
  ``--start_intraview 0.0``); τt warms up per step (the code: per epoch);
* ``flsl.sa_scale`` / ``flsl.ca_scale``: α relative to 1/√D (the code's: 0.1/√384, 0.2/√384);
* ``flsl.random_sampling``: false (code: each window's top-left token) or true (paper);
* no option: crops resampled once from the image; augmentation with the official marginals
  but independent draws; paper recipe from the README command (K = 4096, τt 0.04 → 0.07);
* not implemented: ``--model_previous_stage``, ``--layernorm_on_mode``, ``attention_stable``.

Details: docs/methods/flsl.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.views.multicrop import ViewsConfig, group_by_resolution
from densessl.methods.base import Method, StepInfo, register_method
from densessl.methods.dino.method import DINOParams, dino_head, teacher_temperature
from densessl.methods.flsl.loss import FLSLLoss, nonparametric_attention
from densessl.methods.flsl.sampling import num_window_samples, window_sample_indices
from densessl.methods.student_teacher import StudentTeacher, make_teacher
from densessl.models.config import FAMILIES
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.schedules import cosine

__all__ = ["FLSL", "FLSLParams", "sincos_pos_embed_2d"]


@dataclass
class FLSLParams(DINOParams):
    """FLSL hyper-parameters (defaults: the official README's ViT-S/16 recipe).

    DINO's fields keep their meaning for FLSL's head and k-means cross-entropy: ``out_dim``
    is the number of centroids K (4096), ``hidden_dim``/``bottleneck_dim``/``use_bn_in_head``
    /``norm_last_layer`` shape the head, ``student_temp`` is τs (0.1), the teacher
    temperature warms up from ``warmup_teacher_temp`` (0.04) to ``teacher_temp`` (0.07)
    over ``warmup_teacher_temp_epochs`` (30), and ``center_momentum`` (0.9) is used only with
    ``teacher_centering``.

    Attributes:
        meanshift_weight: υ, weight of the intra-view mean-shift loss (0.03). Larger values
            favour low-level (colour, texture) grouping; the authors suggest small or even
            negative starting values for more semantic features.
        meanshift_weight_start: υ at step 0, cosine to ``meanshift_weight`` (None: constant).
        kmeans_weight: η, weight of the inter-view k-means cross-entropy (1.0).
        vmr_weight: γ, weight of the volume-maximisation regulariser (5.0); raise it if the
            mean assignment drifts from uniform (few prototypes in use).
        volume_maximization: use the KL-to-uniform regulariser (paper: true).
        teacher_centering: subtract DINO's running centre from the teacher logits instead of
            (or besides) the regulariser (paper: false).
        sa_scale / ca_scale: α·√D of the self-attention (mean-shift) and cross-attention
            steps (0.1 and 0.2). Larger α gives sharper, more local modes; the authors warn
            that α_ca smaller than α_sa leads to collapse.
        sa_scale_start / ca_scale_start: values at step 0, cosine to the final ones (None:
            constant).
        window_global / window_local: sampling window side for the student's global views
            (3) and local views (2): one token per window enters the losses.
        random_sampling: a random token per window (the paper's "random pooling") instead
            of the window's top-left token (official default).
        sincos_pos_embed: replace the learned position embedding by a fixed 2-D sin-cos
            table (MAE layout: first half of the channels encodes the column).
    """

    section: ClassVar[str] = "flsl"

    out_dim: int = 4096
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    meanshift_weight: float = 0.03
    meanshift_weight_start: float | None = None
    kmeans_weight: float = 1.0
    vmr_weight: float = 5.0
    volume_maximization: bool = True
    teacher_centering: bool = False
    sa_scale: float = 0.1
    ca_scale: float = 0.2
    sa_scale_start: float | None = None
    ca_scale_start: float | None = None
    window_global: int = 3
    window_local: int = 2
    random_sampling: bool = False
    sincos_pos_embed: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kmeans_weight", "vmr_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"flsl.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("sa_scale", "ca_scale", "sa_scale_start", "ca_scale_start"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"flsl.{name} must be > 0, got {value}")
        for name in ("window_global", "window_local"):
            if getattr(self, name) < 1:
                raise ValueError(f"flsl.{name} must be >= 1, got {getattr(self, name)}")


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sin-cos position table ``[h*w, dim]`` (MAE / FLSL layout).

    Token ``r * w + c`` gets ``[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]`` with
    ``ω_i = 10000^(−i / (dim/4))``, ``i < dim/4``: the first half of the channels encodes
    the column (x), the second half the row (y).
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos table needs an embedding width divisible by 4, got {dim}")
    height, width = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )

    def encode(position: Tensor) -> Tensor:
        angles = position.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def _rows(views: list[Tensor]) -> Tensor:
    """Per-view ``[B, q_v, D]`` tensors → ``[Σ_v B·q_v, D]`` (view-major)."""
    return torch.cat([view.flatten(0, 1) for view in views])


def _gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens [n, N, D]`` at ``index [n, q]`` → ``[n, q, D]``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


@register_method
class FLSL(Method):
    """FLSL (see the module docstring)."""

    name = "flsl"
    description = "intra-view mean-shift + inter-view k-means on patch features, EMA teacher"
    paper = "Su et al., FLSL: Feature-level Self-supervised Learning, NeurIPS 2023"
    Params = FLSLParams
    needs_cls_token = False

    def __init__(self, params: FLSLParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__(params, backbone, views)
        self._check_config(params, backbone, views)
        student_backbone = build_backbone(backbone)
        self.embed_dim = student_backbone.embed_dim
        if params.sincos_pos_embed:
            pos_embed = student_backbone.model.pos_embed
            grid = student_backbone.model.patch_embed.grid_size
            with torch.no_grad():
                pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, grid).unsqueeze(0))
            pos_embed.requires_grad_(False)
        head = dino_head(params, self.embed_dim)
        self.student = StudentTeacher(student_backbone, head)
        self.teacher = make_teacher(self.student, backbone)
        self.flsl_loss = FLSLLoss(
            params.out_dim,
            student_temp=params.student_temp,
            meanshift_weight=params.meanshift_weight,
            kmeans_weight=params.kmeans_weight,
            vmr_weight=params.vmr_weight,
            volume_maximization=params.volume_maximization,
            teacher_centering=params.teacher_centering,
            center_momentum=params.center_momentum,
        )

    @staticmethod
    def _check_config(params: FLSLParams, backbone: BackboneConfig, views: ViewsConfig) -> None:
        if backbone.cls_token or not backbone.final_norm:
            raise ValueError(
                "flsl needs a backbone without CLS token and with its final LayerNorm (the "
                "mean-shift runs on post-norm tokens): set backbone.cls_token=false "
                "backbone.final_norm=true"
            )
        if params.sincos_pos_embed and FAMILIES[backbone.family].rope:
            raise ValueError(
                f"flsl.sincos_pos_embed=true replaces a learned position table, but "
                f"backbone.family={backbone.family} has rotary positions (already fixed, none "
                "to replace): set flsl.sincos_pos_embed=false"
            )
        if views.num_views < 2:
            raise ValueError("flsl needs the teacher view plus at least one student view")
        if not views.nested:
            raise ValueError(
                "flsl cuts its student views from the teacher view (crop 0): set "
                "views.nested=true (and views.first_scale for the teacher crop)"
            )
        grids = {"views.global_size": (views.global_size, params.window_global)}
        if views.num_local:
            grids["views.local_size"] = (views.local_size, params.window_local)
        for key, (size, window) in grids.items():
            side = size // backbone.patch_size
            try:
                num_window_samples((side, side), window)
            except ValueError as err:
                raise ValueError(
                    f"flsl: {key}={size} with patch {backbone.patch_size}: {err}"
                ) from None

    def teacher_backbone(self) -> ViTBackbone:
        return self.teacher.backbone

    def student_backbone(self) -> ViTBackbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student, self.teacher)]

    def schedules(self, info: StepInfo) -> dict[str, float]:
        """τt, υ and the absolute attention multipliers α_sa, α_ca at this step."""
        p = self.params

        def ramp(start: float | None, end: float) -> float:
            return cosine(info.step, info.total_steps, end if start is None else start, end)

        root = math.sqrt(self.embed_dim)
        return {
            "teacher_temp": teacher_temperature(p, info),
            "meanshift_weight": ramp(p.meanshift_weight_start, p.meanshift_weight),
            "sa_scale": ramp(p.sa_scale_start, p.sa_scale) / root,
            "ca_scale": ramp(p.ca_scale_start, p.ca_scale) / root,
        }

    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        crops: list[Tensor] = batch["crops"]
        sched = self.schedules(info)
        num_global = self.views_config.num_global
        with torch.no_grad():
            _, teacher_tokens = self.teacher.backbone.tokens(crops[0])
            teacher_tokens = teacher_tokens.flatten(1, 2)  # [B, N_t, D]
        batch_size = teacher_tokens.shape[0]
        keys: Tensor | None = batch.get("key")  # per-sample randomness (densessl.ops.keyed_random)
        samples, modes, positives = [], [], []
        for indices, stacked in group_by_resolution(crops[1:]):
            _, patches = self.student.backbone.tokens(stacked)
            grid = (patches.shape[1], patches.shape[2])
            for view, tokens in zip(indices, patches.flatten(1, 2).split(batch_size), strict=True):
                global_view = view + 1 < num_global
                window = self.params.window_global if global_view else self.params.window_local
                index = window_sample_indices(
                    grid,
                    window,
                    batch_size,
                    self.params.random_sampling,
                    keys=None if keys is None else keys.to(tokens.device, non_blocking=True),
                    salt=view,
                )
                x = _gather_tokens(tokens, index.to(tokens.device, non_blocking=True))
                samples.append(x)
                modes.append(nonparametric_attention(x, tokens, sched["sa_scale"]))
                with torch.no_grad():
                    positives.append(
                        nonparametric_attention(x.detach(), teacher_tokens, sched["ca_scale"])
                    )
        # [M, D] rows in view-major, then image, then token order, as the official code.
        x, mode = _rows(samples), _rows(modes)
        student_logits = self.student.head(mode)
        with torch.no_grad():
            teacher_logits = self.teacher.head(_rows(positives))
        terms = self.flsl_loss(
            x,
            mode,
            student_logits,
            teacher_logits,
            sched["teacher_temp"],
            sched["meanshift_weight"],
        )
        diagnostics = self._diagnostics(x, teacher_logits, teacher_tokens, sched["teacher_temp"])
        self.flsl_loss.update_center(teacher_logits)
        return {
            **terms,
            **diagnostics,
            # Host-side schedule values stay CPU tensors (a device copy would sync per step).
            **{name: torch.tensor(value) for name, value in sched.items()},
        }

    @torch.no_grad()
    def _diagnostics(
        self, samples: Tensor, teacher_logits: Tensor, teacher_tokens: Tensor, temperature: float
    ) -> dict[str, Tensor]:
        """Collapse diagnostics on the local batch (no host sync).

        * DINO's teacher diagnostics of the k-means targets (``teacher_entropy``,
          ``teacher_batch_entropy``, ``teacher_mutual_info``, ``kl_to_center``);
        * ``clusters_used``: prototypes that are the teacher's argmax for at least one
          sampled token (out of K; low = few clusters in use);
        * ``patch_std`` / ``sample_std``: spread of the L2-normalised teacher tokens and of
          the sampled student tokens across the batch (→ 0 when all tokens look alike, the
          trivial minimum of the mean-shift loss).
        """
        out = self.flsl_loss.kmeans.diagnostics(teacher_logits, temperature)
        hits = torch.zeros(teacher_logits.shape[-1], device=teacher_logits.device)
        out["clusters_used"] = hits.index_fill_(0, teacher_logits.argmax(dim=-1), 1.0).sum()
        teacher = F.normalize(teacher_tokens.float(), dim=-1)
        out["patch_std"] = teacher.std(dim=(0, 1)).mean()
        out["sample_std"] = F.normalize(samples.float(), dim=-1).std(dim=0).mean()
        return out
