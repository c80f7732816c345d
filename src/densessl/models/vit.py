"""The ViT backbone every method and evaluation shares: a thin wrapper around timm.

:class:`ViTBackbone` holds a timm model (``self.model``, so its state dict keys are
``model.<timm key>``): a ``VisionTransformer`` for the ``vit`` and ``dinov2`` families, an
``Eva`` with rotary position embeddings for ``dinov3`` (:mod:`densessl.models.config`). Every
family exposes the same dense outputs; prefix tokens (CLS, registers) take part in every
block but never enter the patch grid:

* :meth:`ViTBackbone.tokens` → ``(cls [B, D] | None, patches [B, h, w, D])``, row-major
  patch grid, after the final LayerNorm (or before it when ``final_norm=False``);
* :meth:`ViTBackbone.last_attention` → ``[B, heads, h*w]``, the last block's softmax
  attention from the CLS query to every patch (DINO's ``get_last_selfattention(x)[:, :, 0, 1:]``);
* :meth:`ViTBackbone.tokens_and_attention` → both from one forward pass;
* :meth:`ViTBackbone.block_tokens` → the same pairs after chosen blocks (multi-layer probes).

Any input whose sides are multiples of the patch size works (non-square too): learned
position embeddings are resampled per forward, rotary angles recomputed for the grid.
``pos_interp="timm"`` uses timm's resampling (bicubic to the target ``size``, antialiased);
``pos_interp="dino"`` reproduces the official DINO (and DINOv2) code exactly (bicubic with
``scale_factor=(n + 0.1) / sqrt(N)``, no antialias, facebookresearch/dino @7c446df5
``vision_transformer.py`` L174-194); ``"bilinear"`` the official LOCA. Training runs timm's
fused ``scaled_dot_product_attention`` (the explicit product on CPU under bf16 autocast, where
it is faster: :mod:`densessl.models.attention`); attention maps are computed only when asked.

Loading weights from files (``load_backbone``, ``backbone_from_state``,
``load_timm_weights``) is in :mod:`densessl.models.loading`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from densessl.models.attention import use_block_attention
from densessl.models.cls_attention import cls_attention
from densessl.models.config import (
    ARCHS,
    FAMILIES,
    BackboneConfig,
    describe_config,
    timm_spec_for,
)
from densessl.models.dino_compat import dino_state_dict_to_timm, resample_pos_embed

__all__ = [
    "ARCHS",
    "BackboneConfig",
    "ViTBackbone",
    "build_backbone",
    "describe_config",
    "dino_state_dict_to_timm",
    "resample_pos_embed",
    "timm_spec_for",
]


class ViTBackbone(nn.Module):
    """A timm ViT with dense outputs (see the module docstring).

    Attributes:
        config: the :class:`BackboneConfig` it was built from.
        model: the timm ``VisionTransformer`` or ``Eva`` (``num_classes=0``,
            ``global_pool=''``, ``dynamic_img_size=True``).
        patch_size / embed_dim / num_heads / has_cls_token: shortcuts.
        num_registers: register tokens; num_prefix_tokens: CLS + registers.
        uses_rope: rotary position embeddings (``dinov3``) instead of a learned table.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        spec = timm_spec_for(config)
        self.model = timm.create_model(
            spec["architecture"],
            pretrained=False,
            drop_path_rate=config.drop_path_rate,
            **spec["kwargs"],
        )
        self.patch_size = config.patch_size
        self.embed_dim = config.resolved_embed_dim
        self.num_heads = config.resolved_num_heads
        self.has_cls_token = config.cls_token
        self.num_registers = config.resolved_num_registers
        self.num_prefix_tokens = config.num_prefix_tokens
        self.uses_rope = FAMILIES[config.family].rope
        use_block_attention(self.model, config.attention)
        self.model.set_grad_checkpointing(config.grad_checkpointing)

    # ------------------------------------------------------------------ geometry
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` of an input of ``height x width`` pixels.

        Raises:
            ValueError: a side is not a multiple of the patch size (names both sizes).
        """
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {p}; "
                f"resize or crop to e.g. {max(p, height // p * p)}x{max(p, width // p * p)}"
            )
        return height // p, width // p

    def timm_spec(self) -> dict[str, Any]:
        """How to recreate ``self.model`` with ``timm.create_model`` (used by export).

        Returns:
            ``{"architecture": name, "kwargs": {...}, "pos_interp": "timm" | "dino"}``;
            ``timm.create_model(spec["architecture"], **spec["kwargs"])`` accepts
            ``self.model.state_dict()`` strictly. timm itself always resamples position
            embeddings its own way (``pos_interp="timm"``).
        """
        return timm_spec_for(self.config)

    # ------------------------------------------------------------------ forward parts
    def _patches(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch-embed images ``[B, C, H, W]`` → ``([B, h, w, D], (h, w))``."""
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        grid = self.grid_size(x.shape[-2], x.shape[-1])
        weight = self.model.patch_embed.proj.weight
        return self.model.patch_embed(x.to(device=weight.device, dtype=weight.dtype)), grid

    def _prefix(self, batch: int) -> list[Tensor]:
        m = self.model
        tokens = [m.cls_token] if self.has_cls_token else []
        tokens += [m.reg_token] if self.num_registers else []
        return [t.expand(batch, -1, -1) for t in tokens]

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        """Patch + position embedding and prefix tokens: ``([B, prefix + h*w, D], grid, rope)``.

        ``rope`` is the rotary embedding of the grid (``[h*w, 2 * head_dim]``) for ``dinov3``,
        else None.
        """
        tokens, grid = self._patches(x)  # [B, h, w, D] (dynamic_img_size → NHWC)
        m = self.model
        if self.uses_rope:
            tokens, rope = m._pos_embed(tokens)
            return m.norm_pre(tokens), grid, rope
        if self.config.pos_interp == "timm":
            tokens = m._pos_embed(tokens)
        else:
            embedded_prefix = 0 if m.no_embed_class else self.num_prefix_tokens
            pos = resample_pos_embed(
                m.pos_embed, grid, m.patch_embed.grid_size, embedded_prefix, self.config.pos_interp
            )
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
            prefix = self._prefix(tokens.shape[0])
            if m.no_embed_class:
                tokens = torch.cat([*prefix, tokens + pos], dim=1)
            else:
                tokens = torch.cat([*prefix, tokens], dim=1) + pos
            tokens = m.pos_drop(tokens)
        return m.norm_pre(m.patch_drop(tokens)), grid, None

    def _split(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor | None, Tensor]:
        x = self.model.norm(x)
        cls = x[:, 0] if self.has_cls_token else None
        patches = x[:, self.num_prefix_tokens :].reshape(x.shape[0], grid[0], grid[1], x.shape[-1])
        return cls, patches

    def _require_cls_token(self) -> None:
        if not self.has_cls_token:
            raise ValueError(
                "last_attention needs a CLS token; this backbone was built with "
                "cls_token=False (SelfPatch/FLSL layout), so there is no CLS attention map"
            )

    def _blocks(self, x: Tensor, blocks: Sequence[nn.Module], rope: Tensor | None) -> Tensor:
        saving = self.model.grad_checkpointing and torch.is_grad_enabled()
        if not self.uses_rope:
            if saving:
                from timm.models import checkpoint_seq

                return checkpoint_seq(blocks, x)
            return blocks(x)  # type: ignore[operator]
        for block in blocks:
            if saving:
                x = checkpoint(block, x, rope=rope, use_reentrant=False)
            else:
                x = block(x, rope=rope)
        return x

    # ------------------------------------------------------------------ public outputs
    def tokens(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Final tokens of images ``x``.

        Args:
            x: ``[B, C, H, W]``, ``H`` and ``W`` multiples of the patch size; moved to the
                module's device and dtype.

        Returns:
            ``(cls [B, D] or None, patches [B, H/p, W/p, D])``, after the final LayerNorm when
            ``final_norm`` (else pre-norm); patches in row-major order, registers left out.
        """
        x, grid, rope = self._embed(x)
        return self._split(self._blocks(x, self.model.blocks, rope), grid)

    def block_tokens(
        self, x: Tensor, blocks: Sequence[int], norm: bool = True
    ) -> list[tuple[Tensor | None, Tensor]]:
        """``(cls, patches)`` after each block in ``blocks`` (0-based; -1 is the last).

        Args:
            x: ``[B, C, H, W]`` images.
            blocks: block indices, any order; negative indices count from the end.
            norm: apply the final LayerNorm to each output (DINOv2's probes do).

        Returns:
            One ``(cls [B, D] or None, patches [B, h, w, D])`` per entry of ``blocks``, in
            that order; the last block with ``norm`` equals :meth:`tokens`.
        """
        depth = len(self.model.blocks)
        wanted = [b + depth if b < 0 else b for b in blocks]
        if not wanted or any(not 0 <= b < depth for b in wanted):
            raise ValueError(f"blocks must be indices in [-{depth}, {depth}), got {list(blocks)}")
        x, grid, rope = self._embed(x)
        found: dict[int, tuple[Tensor | None, Tensor]] = {}
        for index, block in enumerate(self.model.blocks[: max(wanted) + 1]):
            x = self._blocks(x, [block], rope) if self.uses_rope else block(x)
            if index in wanted:
                y = self.model.norm(x) if norm else x
                cls = y[:, 0] if self.has_cls_token else None
                patches = y[:, self.num_prefix_tokens :].reshape(y.shape[0], *grid, y.shape[-1])
                found[index] = (cls, patches)
        return [found[b] for b in wanted]

    def encode(self, x: Tensor, keep: Tensor | None = None, pos_embed: bool = True) -> Tensor:
        """Final tokens of a subset of patches, dropped right after patch + position embedding.

        Backbones without a CLS token only (LOCA's query and reference encoders). Registers,
        if any, are prepended to the kept patches and left out of the output.

        Args:
            x: ``[B, C, H, W]`` images.
            keep: row-major indices of the patches to encode, ``[n]`` (the same for every
                image) or ``[B, n]``; None keeps all ``h*w``.
            pos_embed: add the (resampled) position embedding, or the rotary angles of the
                kept positions; False encodes the patches without any position information
                (LOCA's queries without PE).

        Returns:
            ``[B, n, D]`` tokens in the order of ``keep``, after the final LayerNorm when
            ``final_norm``. With ``keep=None`` and ``pos_embed=True`` equal to
            ``tokens(x)[1].flatten(1, 2)``.
        """
        if self.has_cls_token:
            raise ValueError("encode() is for backbones without a CLS token (cls_token=False)")
        tokens, grid = self._patches(x)
        m = self.model
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # [B, h*w, D]
        rope = None
        if pos_embed and self.uses_rope:
            rope = m.rope.get_embed(shape=list(grid))  # [h*w, 2 * head_dim]
        elif pos_embed:
            tokens = tokens + resample_pos_embed(
                m.pos_embed, grid, m.patch_embed.grid_size, 0, self.config.pos_interp
            )
        tokens = m.pos_drop(tokens)
        if keep is not None:
            keep = keep.to(tokens.device)
            if keep.dim() == 1:
                tokens = tokens[:, keep]
                rope = None if rope is None else rope[keep]
            else:
                index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
                tokens = torch.gather(tokens, 1, index)
                rope = None if rope is None else rope[keep].unsqueeze(1)  # [B, 1, n, 2d]
        tokens = torch.cat([*self._prefix(tokens.shape[0]), tokens], dim=1)
        if not self.uses_rope:
            tokens = m.patch_drop(tokens)
        out = m.norm(self._blocks(m.norm_pre(tokens), m.blocks, rope))
        return out[:, self.num_registers :]

    def last_attention(self, x: Tensor) -> Tensor:
        """Last block's CLS→patch softmax attention, ``[B, heads, (H/p)*(W/p)]`` (float32).

        Rows exclude the CLS→CLS and CLS→register entries, so each head's row sums to
        ``1 -`` the attention the CLS token pays to the prefix tokens. Only the CLS query row
        is computed; the last block's output is not.

        Raises:
            ValueError: the backbone has no CLS token.
        """
        self._require_cls_token()
        x, _, rope = self._embed(x)
        x = self._blocks(x, self.model.blocks[:-1], rope)
        return cls_attention(self.model.blocks[-1], x, rope, self.num_prefix_tokens)

    def tokens_and_attention(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """:meth:`tokens` and :meth:`last_attention` from a single forward pass.

        Returns:
            ``(cls [B, D], patches [B, h, w, D], attn [B, heads, h*w])``.
        """
        self._require_cls_token()
        x, grid, rope = self._embed(x)
        x = self._blocks(x, self.model.blocks[:-1], rope)
        attn = cls_attention(self.model.blocks[-1], x, rope, self.num_prefix_tokens)
        x = self._blocks(x, self.model.blocks[-1:], rope)
        cls, patches = self._split(x, grid)
        return cls, patches, attn

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Same as :meth:`tokens`."""
        return self.tokens(x)


def build_backbone(config: BackboneConfig) -> ViTBackbone:
    """A randomly initialised (timm init) :class:`ViTBackbone` for ``config``."""
    return ViTBackbone(config)
