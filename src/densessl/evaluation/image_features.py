"""One feature vector per image, and the last block's attention keys, from an extractor.

The protocols of :mod:`densessl.evaluation.registry` receive a patch-feature extractor
(``images [B, 3, H, W] -> patches [B, h, w, D]``, :mod:`densessl.evaluation.features`). The
image-level protocols also need what a ViT computes beside the patches; this module reads it
from the wrapped model without changing the extractor's contract:

* :func:`image_features`: the final CLS token (after the last LayerNorm, as DINO's
  ``VisionTransformer.forward`` returns it; facebookresearch/dino @7c446df, eval_knn.py) or,
  for backbones without CLS (SelfPatch/FLSL layouts, any callable), the mean of the patches.
* :func:`last_block_keys`: the keys of the last block's attention for every patch token, all
  heads concatenated, CLS dropped, no normalisation, as LOST's forward hook on
  ``blocks[-1].attn.qkv`` reads them (valeoai/LOST @fcedbec, main_lost.py:217-251).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.evaluation.preprocess import extract_features
from densessl.models.cls_attention import query_key_weights
from densessl.models.vit import ViTBackbone

POOLS = ("auto", "cls", "mean")


def _timm_vit(extractor: Any) -> nn.Module | None:
    """The timm VisionTransformer inside an extractor (densessl or timm), else None."""
    model = getattr(extractor, "model", None)
    if isinstance(model, ViTBackbone):
        model = model.model
    if model is not None and hasattr(model, "blocks") and hasattr(model, "forward_features"):
        return model
    return None


def _has_cls(extractor: Any) -> bool:
    model = getattr(extractor, "model", None)
    if isinstance(model, ViTBackbone):
        return bool(model.has_cls_token)
    vit = _timm_vit(extractor)
    return vit is not None and getattr(vit, "cls_token", None) is not None


@torch.no_grad()
def image_features(extractor: Any, images: Tensor, pool: str = "auto") -> tuple[Tensor, str]:
    """Image features ``[B, D]`` (float32) and how they were pooled.

    Args:
        extractor: a densessl extractor, a timm-model extractor or any patch callable.
        images: normalised ``[B, 3, H, W]``.
        pool: ``"cls"`` (the final CLS token; an error without one), ``"mean"`` (mean of
            the final patch features) or ``"auto"`` (CLS when the backbone has one).

    Returns:
        ``(features, "cls" | "mean_patches")``.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool != "mean" and _has_cls(extractor):
        model = extractor.model
        if isinstance(model, ViTBackbone):
            cls = model.tokens(images)[0]
        else:
            first = next(model.parameters())
            cls = model.forward_features(images.to(device=first.device, dtype=first.dtype))[:, 0]
        return cls.float(), "cls"
    if pool == "cls":
        raise ValueError("pool='cls' needs a ViT with a CLS token; this backbone has none")
    return extract_features(extractor, images).mean(dim=(1, 2)), "mean_patches"


@torch.no_grad()
def last_blocks_cls(extractor: Any, images: Tensor, n: int = 1, pool: str = "auto") -> Tensor:
    """DINO eval_linear.py's features: the CLS token of each of the last ``n`` blocks after
    the final LayerNorm, concatenated ``[B, n * D]`` (``get_intermediate_layers``); without a
    CLS token (or ``pool="mean"``) the mean of each block's normed patch tokens."""
    vit = _timm_vit(extractor)
    if vit is None:
        if n != 1:
            raise ValueError("n_last_blocks > 1 needs a ViT backbone (densessl or timm)")
        return image_features(extractor, images, pool)[0]
    if n > len(vit.blocks):
        raise ValueError(f"n_last_blocks={n} but the backbone has {len(vit.blocks)} blocks")
    use_cls = pool != "mean" and _has_cls(extractor)
    if pool == "cls" and not use_cls:
        raise ValueError("pool='cls' needs a ViT with a CLS token; this backbone has none")
    outputs: list[Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, o: outputs.append(o)) for b in vit.blocks[-n:]]
    try:
        extract_features(extractor, images)
    finally:
        for hook in hooks:
            hook.remove()
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    normed = [vit.norm(o) for o in outputs]
    parts = [t[:, 0] if use_cls else t[:, prefix:].mean(dim=1) for t in normed]
    return torch.cat(parts, dim=-1).float()


@torch.no_grad()
def last_block_keys(extractor: Any, images: Tensor) -> Tensor:
    """Keys of the last attention block, ``[B, h*w, heads*head_dim]`` (float32).

    A forward hook on ``blocks[-1].norm1`` captures the block's normed input ``[B, N, D]``
    (prefix tokens, then patches row-major); its key projection (timm's fused ``qkv`` with its
    bias, or an ``Eva`` block's ``qkv`` + ``k_bias`` / ``k_proj``), heads in order, minus the
    prefix tokens, is returned: for DINO's ViT exactly the key third of LOST's hook on
    ``attn.qkv``. Rotary embeddings (``dinov3``) are not applied: the keys are the content
    part LOST compares, not the position-rotated ones. The extractor runs as usual, so any
    position embedding rule of the backbone applies.

    Raises:
        ValueError: the extractor wraps no timm ViT (a plain callable has no keys).
    """
    vit = _timm_vit(extractor)
    if vit is None:
        raise ValueError("attention keys need a ViT backbone (densessl or timm), not a callable")
    block = vit.blocks[-1]
    captured: list[Tensor] = []
    handle = block.norm1.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        extract_features(extractor, images)
    finally:
        handle.remove()
    _, _, w_k, b_k = query_key_weights(block.attn)
    keys = F.linear(captured[-1], w_k, b_k)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    return keys[:, prefix:].float()
