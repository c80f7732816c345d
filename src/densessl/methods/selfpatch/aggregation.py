"""SelfPatch's class-attention head: positive matching and aggregation of neighbour patches.

Yun et al., "Patch-level Representation Learning for Self-supervised Vision Transformers",
CVPR 2022; official code alinlab/SelfPatch @81aef149 (``selfpatch_vision_transformer.py``,
``SelfPatchHead`` and ``LayerScale_Block_CA``).

SelfPatch's backbone has no [CLS] token and no final LayerNorm. The image-level token is made
by this head instead: a learned class token reads the patch tokens through two CaiT-style
class-attention blocks (only the class token is updated), and one LayerNorm closes the head.
The same blocks also build each patch's *positive target*:

1. **Positive matching** (:func:`select_neighbours`). For patch i of an h x w grid, the
   candidates are its 8 neighbours (3x3 window without i). Their cosine similarity to i is
   taken on the (teacher) backbone's output tokens, and the ``k`` most similar candidates
   are the positives of i (k = 4).
2. **Aggregation** (:meth:`ClassAttentionHead.aggregate`). The learned class token runs
   through the class-attention blocks over the k positives only (i itself is not among the
   keys), giving one pooled token per patch.

Shapes (D: embedding width, N = h*w, k: positives):

* class attention: query ``[B, 1, D]`` over keys/values ``[B, 1 + L, D]`` → ``[B, 1, D]``;
* image path: patches ``[B, N, D]`` → class token ``[B, 1, D]``;
* aggregation: positives ``[B*N, k, D]`` (plus the class token) → ``[B, N, D]``;
* :meth:`ClassAttentionHead.forward` → ``(image [B, D], tokens [B, N, D])`` after the norm,
  ``tokens`` being the patches themselves (student) or their aggregates (teacher).

Differences from the official code, and what is kept from it (details in
docs/methods/selfpatch.md):

* ``border="clip"`` (default) keeps only candidates inside the grid (a corner has 3, an edge
  patch 5; missing slots are masked out of the attention); ``border="wrap"`` is the official
  torus. Both work for any grid of at least 3x3 (:func:`densessl.ops.geometry.neighbour_table`;
  the official table exists for 14x14 and 6x6 only).
* Parameter names, initialisation and block layout follow the official ``SelfPatchHead``, so
  its ``ca_head.*`` weights load without renaming.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from densessl.ops.geometry import neighbour_table

__all__ = [
    "BORDER_MODES",
    "ClassAttention",
    "ClassAttentionBlock",
    "ClassAttentionHead",
    "HeadOutput",
    "NeighbourSelection",
    "select_neighbours",
]

BORDER_MODES = ("clip", "wrap")


class NeighbourSelection(NamedTuple):
    """The positives chosen for every patch (see :func:`select_neighbours`).

    Attributes:
        index: ``[B, N, k]`` row-major token indices of the positives, most similar first.
        valid: ``[B, N, k]`` False for slots without a candidate (clip mode, fewer than k
            neighbours inside the grid); their ``index`` is meaningless.
        similarity: ``[B, N, k]`` float32 cosine similarity of each positive (-inf if invalid).
        candidate_similarity: ``[B, N, 8]`` float32 similarity of all 8 candidates in the
            fixed offset order of :func:`~densessl.ops.geometry.neighbour_table` (-inf outside
            the grid in clip mode).
    """

    index: Tensor
    valid: Tensor
    similarity: Tensor
    candidate_similarity: Tensor


def select_neighbours(patches: Tensor, k: int, border: str = "clip") -> NeighbourSelection:
    """Positive matching: the ``k`` most cosine-similar of each patch's 8 neighbours.

    Args:
        patches: ``[B, h, w, D]`` tokens (SelfPatch: the teacher backbone's output, before
            any norm); h and w must be at least 3. Similarities are computed in float32.
        k: positives per patch, 1 <= k <= 8 (4 in the paper).
        border: ``"clip"`` (neighbours inside the grid only) or ``"wrap"`` (torus, as the
            official code).

    Returns:
        A :class:`NeighbourSelection`. Ties are broken by ``torch.topk``.
    """
    if patches.dim() != 4:
        raise ValueError(f"patches must be [B, h, w, D], got shape {list(patches.shape)}")
    if not 1 <= k <= 8:
        raise ValueError(f"k must be between 1 and 8 (the 3x3 window), got {k}")
    batch, height, width, dim = patches.shape
    table, inside = neighbour_table(height, width, border, device=patches.device)  # [N, 8]
    with torch.autocast(device_type=patches.device.type, enabled=False):
        x = F.normalize(patches.detach().reshape(batch, height * width, dim).float(), dim=-1)
        # One neighbour offset at a time keeps memory at [B, N, D] (not [B, N, 8, D]).
        candidates = torch.stack(
            [(x[:, table[:, j]] * x).sum(dim=-1) for j in range(table.shape[1])], dim=-1
        )
        candidates = candidates.masked_fill(~inside, float("-inf"))
        similarity, slot = candidates.topk(k, dim=-1)  # [B, N, k]
    index = table.unsqueeze(0).expand(batch, -1, -1).gather(2, slot)
    valid = torch.isfinite(similarity)
    return NeighbourSelection(index, valid, similarity, candidates)


class ClassAttention(nn.Module):
    """Multi-head attention whose only query is the first token (CaiT's class attention).

    ``q = W_q x_0``, ``k = W_k x``, ``v = W_v x`` over all tokens (the first included), and
    the output is ``W_o · softmax(q kᵀ / sqrt(d_head)) v`` for the first token only.

    Args:
        dim: token width D (a multiple of ``num_heads``).
        num_heads: attention heads.
        qkv_bias: biases on the q, k, v maps (True in SelfPatch).

    Shapes:
        ``x [B, 1 + L, D]``, optional ``mask [B, 1 + L]`` (True = attend; the first token must
        be kept) → ``[B, 1, D]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, length, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q(x[:, :1]).reshape(batch, 1, heads, head_dim).transpose(1, 2)
        k = self.k(x).reshape(batch, length, heads, head_dim).transpose(1, 2)
        v = self.v(x).reshape(batch, length, heads, head_dim).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, 1, d]
        return self.proj(out.transpose(1, 2).reshape(batch, 1, dim))


class ClassAttentionBlock(nn.Module):
    """Pre-norm class-attention block: only the class token is updated.

    ``u = [c; x]``, ``c ← c + CA(LN₁(u))``, ``c ← c + MLP(LN₂(c))`` (MLP ratio 4, GELU; no
    LayerScale, dropout or drop-path, as in SelfPatch).

    Shapes:
        ``cls [B, 1, D]``, ``tokens [B, L, D]``, optional ``mask [B, L]`` (True = attend) →
        ``[B, 1, D]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, cls: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        u = torch.cat([cls, tokens], dim=1)
        if mask is not None:
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        cls = cls + self.attn(self.norm1(u), mask)
        return cls + self.mlp(self.norm2(cls))


class HeadOutput(NamedTuple):
    """What :meth:`ClassAttentionHead.forward` returns.

    Attributes:
        image: ``[B, D]`` normalised class token (the image-level representation).
        tokens: ``[B, N, D]`` normalised patch tokens (student) or aggregated positives
            (teacher), row-major.
        selection: the positives (teacher path) or None.
    """

    image: Tensor
    tokens: Tensor
    selection: NeighbourSelection | None


class ClassAttentionHead(nn.Module):
    """Learned class token + class-attention blocks + LayerNorm (SelfPatch's ``ca_head``).

    Args:
        dim: token width D of the backbone.
        num_heads: attention heads of the blocks (the backbone's, in SelfPatch).
        num_neighbours: positives k per patch (4).
        border: ``"clip"`` (default, adjacent patches inside the grid) or ``"wrap"`` (the
            official torus).
        num_blocks: class-attention blocks (2, hard-coded in the official code).
        mlp_ratio: MLP hidden width / D (4).

    See the module docstring for the computation and the shapes.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_neighbours: int = 4,
        border: str = "clip",
        num_blocks: int = 2,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if border not in BORDER_MODES:
            raise ValueError(f"border must be one of {BORDER_MODES}, got {border!r}")
        if not 1 <= num_neighbours <= 8:
            raise ValueError(f"num_neighbours must be between 1 and 8, got {num_neighbours}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.dim = dim
        self.num_neighbours = num_neighbours
        self.border = border
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_blocks = nn.ModuleList(
            ClassAttentionBlock(dim, num_heads, mlp_ratio=mlp_ratio) for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def extra_repr(self) -> str:
        return f"num_neighbours={self.num_neighbours}, border={self.border!r}"

    def _run_blocks(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        for block in self.cls_blocks:
            cls = block(cls, tokens, mask)
        return cls

    def image_token(self, tokens: Tensor) -> Tensor:
        """Class token read from all patches, before the norm: ``[B, N, D]`` → ``[B, 1, D]``."""
        return self._run_blocks(tokens)

    def aggregate(self, patches: Tensor) -> tuple[Tensor, NeighbourSelection]:
        """Each patch's positives pooled by the class-attention blocks, before the norm.

        Args:
            patches: ``[B, h, w, D]`` backbone tokens (h, w >= 3).

        Returns:
            ``(aggregates [B, N, D], selection)``. The keys of patch i are the class token and
            its k positives; i itself is not among them.
        """
        batch, height, width, dim = patches.shape
        num = height * width
        k = self.num_neighbours
        selection = select_neighbours(patches, k, self.border)
        flat = patches.reshape(batch, num, dim)
        gather_index = selection.index.reshape(batch, num * k, 1).expand(-1, -1, dim)
        positives = flat.gather(1, gather_index).reshape(batch * num, k, dim)
        # Only clip mode with k > 3 can leave slots empty (a corner has 3 candidates); the
        # decision is static, so there is no host-device sync.
        needs_mask = self.border == "clip" and k > 3
        mask = selection.valid.reshape(batch * num, k) if needs_mask else None
        pooled = self._run_blocks(positives, mask)  # [B*N, 1, D]
        return pooled.reshape(batch, num, dim), selection

    def forward(self, patches: Tensor, aggregate: bool) -> HeadOutput:
        """Image token and patch-level tokens, both through the final LayerNorm.

        Args:
            patches: ``[B, h, w, D]`` backbone output (no CLS token, no final norm).
            aggregate: False (student): the tokens are the patches themselves. True
                (teacher): the tokens are the aggregated positives of every patch.
        """
        if patches.dim() != 4 or patches.shape[-1] != self.dim:
            raise ValueError(f"patches must be [B, h, w, {self.dim}], got {list(patches.shape)}")
        batch, height, width, dim = patches.shape
        flat = patches.reshape(batch, height * width, dim)
        image = self.image_token(flat)
        selection = None
        if aggregate:
            tokens, selection = self.aggregate(patches)
        else:
            tokens = flat
        out = self.norm(torch.cat([image, tokens], dim=1))
        return HeadOutput(out[:, 0], out[:, 1:], selection)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
