"""Projection heads and prototypes shared by the methods.

* :class:`DINOHead`: DINO's MLP → L2-normalised bottleneck → weight-normalised last layer
  (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021;
  facebookresearch/dino ``vision_transformer.py``). Also SelfPatch's image and patch heads.
* :class:`MLPProjection`: Leopart's projection head, an MLP without normalisation layers
  whose output is L2-normalised (Ziegler & Asano, "Self-Supervised Learning of Object Parts
  for Semantic Segmentation", CVPR 2022; MkuuWaUjinga/leopart ``src/vit.py``).
* :class:`Prototypes`: Leopart's bias-free prototype layer whose rows are re-L2-normalised
  before every step, so its scores are cosine similarities.

Every module accepts any number of leading dimensions (``[B, D]`` CLS tokens or
``[B, N, D]`` patch tokens) and acts on the last one.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "MLPProjection", "Prototypes", "build_mlp"]


def _init_linear(module: nn.Module) -> None:
    """Truncated-normal (std 0.02, cut at ±2) weights and zero biases, as DINO and Leopart."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int,
    num_layers: int,
    use_bn: bool = False,
    gelu: str = "none",
) -> nn.Module:
    """``num_layers`` linear layers with GELU (and optional BatchNorm) between them.

    ``gelu`` is the GELU's ``approximate`` argument: ``"none"`` (exact) or ``"tanh"``.

    ``num_layers == 1`` is a single ``Linear(in_dim, out_dim)``; otherwise
    ``Linear(in, hidden) → [BN] → GELU → (Linear(hidden, hidden) → [BN] → GELU) × (L-2) →
    Linear(hidden, out)``. Weights are initialised with :func:`_init_linear`.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    mlp: nn.Module
    if num_layers == 1:
        mlp = nn.Linear(in_dim, out_dim)
    else:
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for d_in, d_out in itertools.pairwise(dims):
            layers.append(nn.Linear(d_in, d_out))
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.GELU(approximate=gelu))
        layers.append(nn.Linear(hidden_dim, out_dim))
        mlp = nn.Sequential(*layers)
    mlp.apply(_init_linear)
    return mlp


def _apply_flat(module: nn.Module, x: Tensor) -> Tensor:
    """Run ``module`` on ``x`` with all leading dimensions flattened (BatchNorm1d needs 2-d)."""
    lead = x.shape[:-1]
    out = module(x.reshape(-1, x.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


class DINOHead(nn.Module):
    """DINO projection head: MLP → L2-normalise → weight-normalised bias-free linear.

    ``z = MLP(x)`` (bottleneck, ``bottleneck_dim``), ``ẑ = z / ||z||``, and the logits are
    ``out_k = g_k · <v_k / ||v_k||, ẑ>`` (weight normalisation, Salimans & Kingma 2016, with
    the magnitudes ``g`` initialised to 1). With ``norm_last_layer=True`` the magnitudes are
    frozen at 1, so every logit is the cosine similarity between the bottleneck and a
    prototype direction ``v_k``: ``|out_k| <= 1``.

    Args:
        in_dim: input feature size D (the backbone's embedding width).
        out_dim: number of prototypes K (65536 in DINO; 4096 for SelfPatch's patch head).
        hidden_dim: width of the hidden MLP layers (2048).
        bottleneck_dim: width of the L2-normalised bottleneck (256).
        num_layers: linear layers in the MLP, bottleneck included (3; 1 = a single linear).
        use_bn: BatchNorm1d after each hidden linear layer (off for ViTs). Statistics are
            taken over every leading position (batch and tokens).
        norm_last_layer: freeze the weight-norm magnitudes at 1 (DINO's default; the teacher
            always uses it, the "boosted" recipe trains the student with False).
        gelu: the MLP's GELU, ``"none"`` (exact, DINO) or ``"tanh"`` (Flax's default: LOCA).

    Shapes:
        ``[..., in_dim]`` → ``[..., out_dim]``.

    The weight-normalised layer is ``self.last_layer`` (a ``torch.nn.utils.parametrizations``
    parametrisation: parameters ``last_layer.parametrizations.weight.original0`` (magnitude
    g, ``[out_dim, 1]``) and ``...original1`` (direction v, ``[out_dim, bottleneck_dim]``)),
    so the trainer finds it by the substring ``"last_layer"`` to freeze it during the first
    epoch. As in DINO, only the MLP gets the truncated-normal init; ``v`` keeps PyTorch's
    default ``nn.Linear`` init.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        gelu: str = "none",
    ) -> None:
        super().__init__()
        if out_dim < 1 or bottleneck_dim < 1:
            raise ValueError(
                f"out_dim and bottleneck_dim must be >= 1, got {out_dim}, {bottleneck_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.use_bn = use_bn
        self.norm_last_layer = norm_last_layer
        self.mlp = build_mlp(in_dim, bottleneck_dim, hidden_dim, num_layers, use_bn, gelu)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """The L2-normalised bottleneck ``[..., bottleneck_dim]`` (unit norm on the last dim)."""
        z = _apply_flat(self.mlp, x) if self.use_bn else self.mlp(x)
        return F.normalize(z, dim=-1, p=2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[..., out_dim]`` for features ``x`` of shape ``[..., in_dim]``."""
        return self.last_layer(self.bottleneck(x))


class MLPProjection(nn.Module):
    """Leopart's projection head: MLP without BN/LN, optionally L2-normalised output.

    ``Linear(D, 2048) → GELU → Linear(2048, 2048) → GELU → Linear(2048, 256)`` for the
    defaults, then ``z / ||z||`` when ``normalize``. Truncated-normal (std 0.02) init.

    Args:
        in_dim: input feature size D.
        out_dim: projection size (256 in Leopart).
        hidden_dim: hidden width (2048).
        num_layers: linear layers (3; 1 = a single linear map).
        normalize: L2-normalise the output (True in Leopart, so that prototype scores are
            cosine similarities).

    Shapes:
        ``[..., in_dim]`` → ``[..., out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        hidden_dim: int = 2048,
        num_layers: int = 3,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.mlp = build_mlp(in_dim, out_dim, hidden_dim, num_layers, use_bn=False)

    def forward(self, x: Tensor) -> Tensor:
        """Projection ``[..., out_dim]`` of ``x`` ``[..., in_dim]``; unit-norm if ``normalize``."""
        z = self.mlp(x)
        return F.normalize(z, dim=-1, p=2) if self.normalize else z


class Prototypes(nn.Module):
    """Bias-free linear scores against ``num_prototypes`` learnable prototype vectors.

    ``scores = x @ Wᵀ`` with ``W`` of shape ``[num_prototypes, dim]``. Leopart (and SwAV)
    re-L2-normalise the rows of ``W`` at the start of every training step
    (:meth:`normalize_`, for student *and* teacher); with unit-norm inputs (e.g. from
    :class:`MLPProjection`) the scores are then cosine similarities in ``[-1, 1]``.
    The rows are truncated-normal (std 0.02) initialised and normalised at construction.

    Args:
        dim: feature size (the projection's ``out_dim``).
        num_prototypes: number of prototypes K (300 in Leopart).

    Shapes:
        ``[..., dim]`` → ``[..., num_prototypes]``.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        if dim < 1 or num_prototypes < 1:
            raise ValueError(f"dim and num_prototypes must be >= 1, got {dim}, {num_prototypes}")
        self.dim = dim
        self.num_prototypes = num_prototypes
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> Prototypes:
        """Re-L2-normalise every prototype (row of ``weight``) in place; returns ``self``.

        Runs under ``no_grad`` and keeps the same ``Parameter`` object, so optimiser state
        stays attached (call it before the forward pass of a step, as Leopart does).
        """
        self.weight.copy_(F.normalize(self.weight, dim=1, p=2))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``[..., num_prototypes]`` for ``x`` of shape ``[..., dim]``."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_prototypes={self.num_prototypes}"
