"""Self-attention of the backbone's blocks: fused kernel or explicit product, picked per call.

Every block of the timm ViT keeps its ``Attention`` module (same parameters, same state-dict
keys); :func:`use_block_attention` only changes its class to :class:`BlockAttention`, whose
forward chooses between

* ``"fused"``: timm's path through ``scaled_dot_product_attention`` (flash / memory-efficient
  kernels; what GPUs want);
* ``"explicit"``: ``softmax(q kᵀ · scale) v`` as three tensor ops, the softmax taken in
  float32 and cast back to the value dtype (as the fused kernels accumulate and CUDA autocast
  computes softmax), so low-precision autocast loses nothing extra;
* ``"auto"`` (default): explicit for CPU inputs under autocast (bf16), fused otherwise.

Why ``auto`` is not simply "fused": measured on CPU (AMD EPYC with AVX512-BF16, 2 threads,
torch 2.14.1; ``benchmarks/README.md``), PyTorch's CPU flash-attention kernel makes a ViT-S/16
forward + backward under bf16 autocast 1.2x slower than the explicit product at 224 px
(16 images), 1.5x at 96 px (64 images) and 1.9x for the 128-d tiny preset at 64 px; in
float32 the two paths are within 3% of each other. Attention maps are never returned from
here: :meth:`densessl.models.vit.ViTBackbone.last_attention` computes its own.

``Eva`` blocks (the ``dinov3`` family) keep timm's ``EvaAttention`` forward, whose non-fused
path is timm's own explicit product; :class:`BlockEvaAttention` only picks between timm's two
paths per call by the same rule.
"""

from __future__ import annotations

import torch
from timm.models.eva import EvaAttention
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

__all__ = [
    "ATTENTION_MODES",
    "BlockAttention",
    "BlockEvaAttention",
    "explicit_attention_wanted",
    "use_block_attention",
]

ATTENTION_MODES = ("auto", "fused", "explicit")


def explicit_attention_wanted(mode: str, x: Tensor) -> bool:
    """Whether ``mode`` runs the explicit product for the input ``x`` (see the module doc)."""
    if mode == "auto":
        return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    return mode == "explicit"


class BlockAttention(Attention):
    """timm's ViT ``Attention`` whose kernel follows ``self.mode`` (see the module docstring).

    Never constructed directly: :func:`use_block_attention` converts built timm modules, so
    the weights and the timm initialisation stay exactly timm's.
    """

    mode: str = "auto"

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """``[B, N, D]`` tokens → ``[B, N, D]``; masks and gates go to timm's own forward."""
        plain = attn_mask is None and not is_causal and self.gate is None
        if not (plain and explicit_attention_wanted(self.mode, x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, num_tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        weights = self.attn_drop(logits.float().softmax(dim=-1).to(v.dtype))
        out = (weights @ v).transpose(1, 2).reshape(batch, num_tokens, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))


class BlockEvaAttention(EvaAttention):
    """timm's ``EvaAttention`` choosing timm's fused or explicit path by ``self.mode``."""

    mode: str = "auto"

    def forward(
        self,
        x: Tensor,
        rope: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """``[B, N, D]`` tokens (rotary embedding ``rope`` of the patches) → ``[B, N, D]``."""
        self.fused_attn = not explicit_attention_wanted(self.mode, x)
        return super().forward(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)


def use_block_attention(model: nn.Module, mode: str) -> None:
    """Make every block's attention of the timm ``model`` a :class:`BlockAttention`
    (``VisionTransformer``) or :class:`BlockEvaAttention` (``Eva``).

    Args:
        model: a timm ``VisionTransformer`` or ``Eva``.
        mode: ``"auto"``, ``"fused"`` or ``"explicit"``.

    Raises:
        ValueError: unknown ``mode``.
        TypeError: a block's attention is neither timm's ViT ``Attention`` nor ``EvaAttention``.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
    for index, block in enumerate(model.blocks):
        attn = block.attn
        if isinstance(attn, Attention):
            attn.__class__ = BlockAttention
            attn.fused_attn = True  # the non-explicit path is always the fused kernel
        elif isinstance(attn, EvaAttention):
            attn.__class__ = BlockEvaAttention
        else:
            raise TypeError(
                f"block {index} attention is {type(attn).__name__}, not timm's ViT Attention "
                "or EvaAttention"
            )
        attn.mode = mode
