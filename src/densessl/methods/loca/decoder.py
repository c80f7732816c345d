"""LOCA's position predictor: one cross-attention block from query to reference patches.

Caron, Houlsby and Schmid, "Location-Aware Self-Supervised Transformers for Semantic
Segmentation", WACV 2024; official code google-research/scenic @4a38d475
``scenic/projects/loca/vit.py`` (``CrossAttentionEncoderBlock`` and the end of
``ViT4LOCA.__call__``).

For query tokens ``x [n, q, D]`` (a query view's encoder output) and the kept reference
tokens ``r [n, k, D]`` (the masked reference's encoder output)::

    h = x + MHA(query = LN_q(x), key = value = LN_kv(r))     separate LayerNorms per stream
    h = h + MLP(LN(h))                                       GELU, hidden width mlp_dim
    logits = Linear_N(LN_final(h))                           [n, q, N] one per reference position

The block has the encoder's width, heads and MLP ratio; no dropout and no stochastic depth
(the official defaults). Attention runs through ``scaled_dot_product_attention``.

Differences from the official Flax module (documented, not options; details in
docs/methods/loca.md): the exact (erf) GELU instead of Flax's tanh default; xavier-uniform
on the full ``[D, D]`` kernels, position layer truncated-normal with std 1/√D; no key bias
(Flax's has an exactly zero gradient, so it only drifts by float noise); LayerNorm ε = 1e-6
as Flax.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossAttentionBlock", "PositionPredictor"]


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention reads another token set.

    Args:
        dim: token width D.
        num_heads: attention heads (D divisible by it).
        mlp_dim: hidden width of the MLP (4·D in ViTs).
        gelu: the MLP's GELU, ``"tanh"`` (Flax's ``nn.gelu`` default: the official code) or
            ``"none"`` (exact).

    Shapes:
        ``x [n, q, D]``, ``context [n, k, D]`` → ``[n, q, D]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, gelu: str = "tanh") -> None:
        super().__init__()
        self.gelu = gelu
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)  # no effect on the output (docstring)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        for layer in (self.q, self.k, self.v, self.proj):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def _heads(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        return x.reshape(n, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if x.dim() != 3 or context.dim() != 3 or x.shape[::2] != context.shape[::2]:
            raise ValueError(
                f"expected x [n, q, D] and context [n, k, D], got {tuple(x.shape)} and "
                f"{tuple(context.shape)}"
            )
        y, c = self.norm_q(x), self.norm_kv(context)
        q, k, v = self._heads(self.q(y)), self._heads(self.k(c)), self._heads(self.v(c))
        attended = F.scaled_dot_product_attention(q, k, v)  # [n, heads, q, D/heads]
        x = x + self.proj(attended.transpose(1, 2).reshape(x.shape))
        return x + self.fc2(F.gelu(self.fc1(self.norm_mlp(x)), approximate=self.gelu))


class PositionPredictor(nn.Module):
    """Cross-attention block → LayerNorm → linear layer over the N reference positions.

    Args:
        dim / num_heads / mlp_dim: the block's sizes (the encoder's).
        num_positions: N, the reference view's token count.
        gelu: the block's GELU (see :class:`CrossAttentionBlock`).

    Shapes:
        ``queries [n, q, D]``, ``reference [n, k, D]`` → logits ``[n, q, N]``.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, num_positions: int, gelu: str = "tanh"
    ) -> None:
        super().__init__()
        self.block = CrossAttentionBlock(dim, num_heads, mlp_dim, gelu)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_positions)
        std = 1.0 / math.sqrt(dim) / 0.87962566103423978  # Flax's truncated LeCun normal
        nn.init.trunc_normal_(self.head.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.head.bias)

    def forward(self, queries: Tensor, reference: Tensor) -> Tensor:
        return self.head(self.norm(self.block(queries, reference)))

    def extra_repr(self) -> str:
        return f"num_positions={self.head.out_features}"
