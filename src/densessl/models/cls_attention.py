"""The CLS token's attention over the patches in one block, for every backbone family.

DINO's attention maps (``get_last_selfattention(x)[:, :, 0, 1:]``) are the softmax row of the
CLS query in the last block. :func:`cls_attention` computes only that row: the CLS query and
the keys of all tokens, in float32 for the softmax, for both timm block kinds:

* ``VisionTransformer`` blocks (``vit``, ``dinov2``): ``attn.qkv`` with its bias;
* ``Eva`` blocks (``dinov3``): ``attn.qkv`` without bias plus ``q_bias``/``k_bias``/``v_bias``
  (or separate ``q_proj``/``k_proj``), and rotary embeddings applied to the patch keys (the
  CLS query is a prefix token and is not rotated, as in timm's ``EvaAttention``).

The returned row covers the patches only; CLS and register columns are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from torch import Tensor, nn

__all__ = ["cls_attention", "query_key_weights"]


def query_key_weights(attn: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """``(w_q, b_q, w_k, b_k)`` of a timm ViT ``Attention`` or ``EvaAttention``."""
    qkv = getattr(attn, "qkv", None)
    if qkv is not None:
        dim = attn.num_heads * attn.head_dim
        w = qkv.weight
        if qkv.bias is not None:
            b_q, b_k = qkv.bias[:dim], qkv.bias[dim : 2 * dim]
        elif getattr(attn, "q_bias", None) is not None:
            b_q, b_k = attn.q_bias, attn.k_bias
        else:
            b_q = b_k = None
        return w[:dim], b_q, w[dim : 2 * dim], b_k
    return attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias


def cls_attention(block: nn.Module, x: Tensor, rope: Tensor | None, num_prefix: int) -> Tensor:
    """CLS-query softmax attention of ``block`` on its input tokens.

    Args:
        block: a timm ViT or Eva block (``norm1`` then ``attn``).
        x: the block's input ``[B, N, D]``, CLS first, then registers, then patches.
        rope: rotary embedding of the patches (``[h*w, 2 * head_dim]``) or None.
        num_prefix: CLS + register tokens before the patches.

    Returns:
        ``[B, heads, N - num_prefix]`` float32: the CLS row over the patches.
    """
    attn = block.attn
    y = block.norm1(x)
    batch, num_tokens, _ = y.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    w_q, b_q, w_k, b_k = query_key_weights(attn)
    q = F.linear(y[:, :1], w_q, b_q).reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k = F.linear(y, w_k, b_k).reshape(batch, num_tokens, heads, head_dim).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        half = bool(getattr(attn, "rotate_half", False))
        rotated = apply_rot_embed_cat(k[:, :, num_prefix:], rope, half=half).type_as(k)
        k = torch.cat([k[:, :, :num_prefix], rotated], dim=2)
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # [B, heads, 1, N]
    return logits.softmax(dim=-1)[:, :, 0, num_prefix:]
