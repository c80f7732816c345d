"""The ViT backbone every method and evaluation shares: a thin wrapper around timm.

:class:`ViTBackbone` holds a timm ``VisionTransformer`` (``self.model``, so its state dict
keys are ``model.<timm key>``) and exposes dense outputs:

* :meth:`ViTBackbone.tokens` → ``(cls [B, D] | None, patches [B, h, w, D])``, row-major
  patch grid, after the final LayerNorm (or before it when ``final_norm=False``);
* :meth:`ViTBackbone.last_attention` → ``[B, heads, h*w]``, the last block's softmax
  attention from the CLS query to every patch (DINO's ``get_last_selfattention(x)[:, :, 0, 1:]``);
* :meth:`ViTBackbone.tokens_and_attention` → both from one forward pass.

Any input whose sides are multiples of the patch size works (non-square too): position
embeddings are resampled per forward. ``pos_interp="timm"`` uses timm's resampling
(bicubic to the target ``size``, antialiased); ``pos_interp="dino"`` reproduces the official
DINO code exactly (bicubic with ``scale_factor=(n + 0.1) / sqrt(N)``, no antialias,
facebookresearch/dino @7c446df5 ``vision_transformer.py`` L174-194). Training runs timm's
fused ``scaled_dot_product_attention`` (the explicit product on CPU under bf16 autocast, where
it is faster: :mod:`densessl.models.attention`); attention maps are computed only when asked.

Loading weights from files (``load_backbone``, ``backbone_from_state``,
``load_timm_weights``) is in :mod:`densessl.models.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.errors import brief
from densessl.models.attention import ATTENTION_MODES, use_block_attention
from densessl.models.dino_compat import dino_state_dict_to_timm, resample_pos_embed

__all__ = [
    "ARCHS",
    "BackboneConfig",
    "ViTBackbone",
    "build_backbone",
    "describe_config",
    "dino_state_dict_to_timm",
    "resample_pos_embed",
]

#: arch → (embed_dim, depth, num_heads), as in DINO (L236-255) and timm.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}
POS_INTERP = ("timm", "dino", "bilinear")
ACT_LAYERS = ("gelu", "gelu_tanh")


@dataclass
class BackboneConfig:
    """Which ViT to build.

    Attributes:
        arch: ``vit_tiny`` (192-d, 3 heads), ``vit_small`` (384/6) or ``vit_base`` (768/12);
            all 12 blocks deep unless ``depth`` says otherwise.
        patch_size: patch side in pixels (8 and 16 are the DINO sizes).
        img_size: side of the image the position-embedding grid is created for; inputs of
            any size (multiples of ``patch_size``) work through interpolation.
        depth / embed_dim / num_heads: overrides of the arch's values (tiny CPU presets).
        cls_token: prepend a [CLS] token (SelfPatch and FLSL use ``False``).
        final_norm: apply the final LayerNorm in :meth:`ViTBackbone.tokens` (SelfPatch keeps
            it in its head: ``False``).
        drop_path_rate: stochastic depth, linear from 0 to this over the blocks.
        pos_interp: ``"timm"`` (timm's antialiased bicubic resampling), ``"dino"``
            (the official DINO formula; bit-compatible with its features at any size) or
            ``"bilinear"`` (antialiased bilinear, ``jax.image.resize``: the official LOCA).
        grad_checkpointing: recompute each block's activations in the backward pass instead
            of keeping them (activation checkpointing): ~1/3 more compute for a much smaller
            activation memory; for ViT-B/L or large batches. Training-time only, the weights
            are unchanged.
        act_layer: the blocks' MLP activation: ``"gelu"`` (exact, erf: timm and DINO) or
            ``"gelu_tanh"`` (the tanh approximation: Flax's ``nn.gelu`` default, so the official
            LOCA code; about 1e-3 per layer from the exact one). Exports carry it in
            ``timm_kwargs``.
        attention: the blocks' attention kernel (:mod:`densessl.models.attention`): ``"auto"``
            (explicit product for CPU inputs under bf16 autocast, where PyTorch's CPU
            flash kernel is slower; fused ``scaled_dot_product_attention`` otherwise),
            ``"fused"`` or ``"explicit"``. Same weights and outputs up to rounding.
    """

    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    cls_token: bool = True
    final_norm: bool = True
    drop_path_rate: float = 0.0
    pos_interp: str = "timm"
    grad_checkpointing: bool = False
    attention: str = "auto"
    act_layer: str = "gelu"

    def __post_init__(self) -> None:
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {ACT_LAYERS}, got {self.act_layer!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {brief(self.arch)}; choose one of {sorted(ARCHS)}")
        if self.pos_interp not in POS_INTERP:
            raise ValueError(
                f"pos_interp must be one of {POS_INTERP}, got {brief(self.pos_interp)}"
            )
        if self.attention not in ATTENTION_MODES:
            raise ValueError(
                f"attention must be one of {ATTENTION_MODES}, got {brief(self.attention)}"
            )
        for name in ("patch_size", "img_size", "depth", "embed_dim", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.resolved_embed_dim % self.resolved_num_heads:
            raise ValueError(
                f"embed_dim {self.resolved_embed_dim} is not divisible by "
                f"num_heads {self.resolved_num_heads}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def resolved_embed_dim(self) -> int:
        return self.embed_dim if self.embed_dim is not None else ARCHS[self.arch][0]

    @property
    def resolved_depth(self) -> int:
        return self.depth if self.depth is not None else ARCHS[self.arch][1]

    @property
    def resolved_num_heads(self) -> int:
        return self.num_heads if self.num_heads is not None else ARCHS[self.arch][2]


class ViTBackbone(nn.Module):
    """A timm ViT with dense outputs (see the module docstring).

    Attributes:
        config: the :class:`BackboneConfig` it was built from.
        model: the timm ``VisionTransformer`` (``num_classes=0``, ``global_pool=''``,
            ``dynamic_img_size=True``).
        patch_size / embed_dim / num_heads / has_cls_token: shortcuts.
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
        self.num_prefix_tokens = 1 if config.cls_token else 0
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
    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch-embed, add (resampled) positions and the CLS token: ``[B, prefix + h*w, D]``."""
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        grid = self.grid_size(x.shape[-2], x.shape[-1])
        weight = self.model.patch_embed.proj.weight
        x = x.to(device=weight.device, dtype=weight.dtype)
        m = self.model
        tokens = m.patch_embed(x)  # [B, h, w, D] (dynamic_img_size → NHWC)
        if self.config.pos_interp == "timm":
            tokens = m._pos_embed(tokens)
        else:
            pos = resample_pos_embed(
                m.pos_embed,
                grid,
                m.patch_embed.grid_size,
                self.num_prefix_tokens,
                self.config.pos_interp,
            )
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
            if m.cls_token is not None:
                tokens = torch.cat([m.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            tokens = m.pos_drop(tokens + pos)
        return m.norm_pre(m.patch_drop(tokens)), grid

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

    def _cls_attention(self, x: Tensor) -> Tensor:
        """CLS-query softmax attention of the last block on its input ``x`` → ``[B, heads, N]``.

        Only the CLS query is projected (keys for all tokens), in float32 for the softmax.
        """
        attn = self.model.blocks[-1].attn
        y = self.model.blocks[-1].norm1(x)
        batch, num_tokens, _ = y.shape
        dim = attn.num_heads * attn.head_dim
        w, b = attn.qkv.weight, attn.qkv.bias
        q = F.linear(y[:, :1], w[:dim], None if b is None else b[:dim])
        k = F.linear(y, w[dim : 2 * dim], None if b is None else b[dim : 2 * dim])
        q = attn.q_norm(q.reshape(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2))
        k = attn.k_norm(k.reshape(batch, num_tokens, attn.num_heads, attn.head_dim).transpose(1, 2))
        logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # [B, heads, 1, N]
        return logits.softmax(dim=-1)[:, :, 0, self.num_prefix_tokens :]

    def _blocks(self, x: Tensor, blocks: nn.Module) -> Tensor:
        if self.model.grad_checkpointing and torch.is_grad_enabled():
            from timm.models import checkpoint_seq

            return checkpoint_seq(blocks, x)
        return blocks(x)

    # ------------------------------------------------------------------ public outputs
    def tokens(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Final tokens of images ``x``.

        Args:
            x: ``[B, C, H, W]``, ``H`` and ``W`` multiples of the patch size; moved to the
                module's device and dtype.

        Returns:
            ``(cls [B, D] or None, patches [B, H/p, W/p, D])``, after the final LayerNorm when
            ``final_norm`` (else pre-norm); patches in row-major order.
        """
        x, grid = self._embed(x)
        return self._split(self._blocks(x, self.model.blocks), grid)

    def encode(self, x: Tensor, keep: Tensor | None = None, pos_embed: bool = True) -> Tensor:
        """Final tokens of a subset of patches, dropped right after patch + position embedding.

        Backbones without a CLS token only (LOCA's query and reference encoders).

        Args:
            x: ``[B, C, H, W]`` images.
            keep: row-major indices of the patches to encode, ``[n]`` (the same for every
                image) or ``[B, n]``; None keeps all ``h*w``.
            pos_embed: add the (resampled) position embedding; False encodes the patches
                without any position information (LOCA's queries without PE).

        Returns:
            ``[B, n, D]`` tokens in the order of ``keep``, after the final LayerNorm when
            ``final_norm``. With ``keep=None`` and ``pos_embed=True`` equal to
            ``tokens(x)[1].flatten(1, 2)``.
        """
        if self.has_cls_token:
            raise ValueError("encode() is for backbones without a CLS token (cls_token=False)")
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        grid = self.grid_size(x.shape[-2], x.shape[-1])
        m = self.model
        weight = m.patch_embed.proj.weight
        tokens = m.patch_embed(x.to(device=weight.device, dtype=weight.dtype))
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # [B, h*w, D]
        if pos_embed:
            tokens = tokens + resample_pos_embed(
                m.pos_embed, grid, m.patch_embed.grid_size, 0, self.config.pos_interp
            )
        tokens = m.pos_drop(tokens)
        if keep is not None:
            keep = keep.to(tokens.device)
            if keep.dim() == 1:
                tokens = tokens[:, keep]
            else:
                index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
                tokens = torch.gather(tokens, 1, index)
        tokens = m.norm_pre(m.patch_drop(tokens))
        return m.norm(self._blocks(tokens, m.blocks))

    def last_attention(self, x: Tensor) -> Tensor:
        """Last block's CLS→patch softmax attention, ``[B, heads, (H/p)*(W/p)]`` (float32).

        Rows exclude the CLS→CLS entry, so each head's row sums to ``1 - attn(CLS→CLS)``.
        Only the CLS query row is computed; the last block's output is not.

        Raises:
            ValueError: the backbone has no CLS token.
        """
        self._require_cls_token()
        x, _ = self._embed(x)
        x = self._blocks(x, self.model.blocks[:-1])
        return self._cls_attention(x)

    def tokens_and_attention(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """:meth:`tokens` and :meth:`last_attention` from a single forward pass.

        Returns:
            ``(cls [B, D], patches [B, h, w, D], attn [B, heads, h*w])``.
        """
        self._require_cls_token()
        x, grid = self._embed(x)
        x = self._blocks(x, self.model.blocks[:-1])
        attn = self._cls_attention(x)
        x = self.model.blocks[-1](x)
        cls, patches = self._split(x, grid)
        return cls, patches, attn

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Same as :meth:`tokens`."""
        return self.tokens(x)


def timm_spec_for(config: BackboneConfig) -> dict[str, Any]:
    """timm architecture name and ``create_model`` kwargs for ``config`` (see ``timm_spec``)."""
    name = f"{config.arch}_patch{config.patch_size}_224"
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True}
    if not timm.is_model(name):
        name = f"{config.arch}_patch16_224"
        kwargs["patch_size"] = config.patch_size
    if config.img_size != 224:
        kwargs["img_size"] = config.img_size
    default_dim, default_depth, default_heads = ARCHS[config.arch]
    for key, value, default in (
        ("embed_dim", config.embed_dim, default_dim),
        ("depth", config.depth, default_depth),
        ("num_heads", config.num_heads, default_heads),
    ):
        if value is not None and value != default:
            kwargs[key] = value
    if not config.cls_token:
        kwargs["class_token"] = False
    if not config.final_norm:
        kwargs["final_norm"] = False
    if config.act_layer != "gelu":
        kwargs["act_layer"] = config.act_layer
    return {"architecture": name, "kwargs": kwargs, "pos_interp": config.pos_interp}


def build_backbone(config: BackboneConfig) -> ViTBackbone:
    """A randomly initialised (timm init) :class:`ViTBackbone` for ``config``."""
    return ViTBackbone(config)


def describe_config(config: BackboneConfig) -> str:
    """``vit_small/16 (384-d, 12 blocks, 6 heads, cls)`` style summary."""
    cls = "cls" if config.cls_token else "no cls"
    return (
        f"{config.arch}/{config.patch_size} ({config.resolved_embed_dim}-d, "
        f"{config.resolved_depth} blocks, {config.resolved_num_heads} heads, {cls})"
    )
