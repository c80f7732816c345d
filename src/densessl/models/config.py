"""Which backbone to build: :class:`BackboneConfig`, the sizes and the families.

A backbone is an *arch* (the width, depth and heads of a size: ``vit_tiny`` … ``vit_huge``) of
a *family* (how timm builds its blocks and positions):

==========  ===============================================  ==========  =====================
family      timm model class and recipe                      positions   prefix tokens
==========  ===============================================  ==========  =====================
``vit``     ``VisionTransformer`` (DINO, SelfPatch, Leopart,  learned     CLS (optional)
            LOCA, FLSL)
``dinov2``  ``VisionTransformer`` with layer scale 1e-5       learned     CLS + 0 or 4 registers
            (``vit_*_patch14_dinov2``, ``*_reg4_dinov2``)
``dinov3``  ``Eva`` with rotary position embeddings, layer    RoPE        CLS + 4 registers
            scale 1e-5, LayerNorm eps 1e-5, q/v bias
            (``vit_*_patch16_dinov3_qkvb``)
==========  ===============================================  ==========  =====================

Registers (``num_registers``) are extra learned tokens after the CLS token: they take part in
every block but never appear in the patch grid. With registers the learned position
embedding covers the patches only (timm's ``no_embed_class``), as in timm's DINOv2-R models.
DINOv2-R is ``family=dinov2, num_registers=4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm

from densessl.errors import brief
from densessl.models.attention import ATTENTION_MODES

#: arch → (embed_dim, depth, num_heads), as in DINO (L236-255), DINOv2 and timm.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}
POS_INTERP = ("timm", "dino", "bilinear")
ACT_LAYERS = ("gelu", "gelu_tanh")


@dataclass(frozen=True)
class Family:
    """How timm builds one backbone family.

    Attributes:
        name: the ``backbone.family`` value.
        model_class: ``"vit"`` (timm ``VisionTransformer``) or ``"eva"`` (timm ``Eva``).
        timm_names: timm model names tried in order (``{arch}`` and ``{patch}`` filled in);
            the first registered one is created, with the size given as keyword arguments.
        default_registers: ``num_registers`` when the config leaves it unset.
        rope: rotary position embeddings instead of a learned table.
        note: one line for the README table and errors.
    """

    name: str
    model_class: str
    timm_names: tuple[str, ...]
    default_registers: int
    rope: bool
    note: str


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "vit",
            "vit",
            ("{arch}_patch{patch}_224", "{arch}_patch16_224", "{arch}_patch14_224"),
            0,
            False,
            "plain ViT, learned positions (DINO, SelfPatch, Leopart, LOCA, FLSL)",
        ),
        Family(
            "dinov2",
            "vit",
            ("{arch}_patch14_dinov2", "vit_small_patch14_dinov2"),
            0,
            False,
            "DINOv2: layer scale, patch 14; num_registers=4 for DINOv2-R",
        ),
        Family(
            "dinov3",
            "eva",
            ("{arch}_patch16_dinov3_qkvb", "vit_small_patch16_dinov3_qkvb"),
            4,
            True,
            "DINOv3: timm Eva, rotary positions, 4 registers, patch 16",
        ),
    )
}


@dataclass
class BackboneConfig:
    """Which ViT to build.

    Attributes:
        arch: ``vit_tiny`` (192-d, 3 heads), ``vit_small`` (384/6), ``vit_base`` (768/12),
            ``vit_large`` (1024/16, 24 blocks) or ``vit_huge`` (1280/16, 32 blocks); 12 blocks
            deep for tiny/small/base unless ``depth`` says otherwise.
        family: ``vit`` (default), ``dinov2`` or ``dinov3`` (the module docstring's table).
        patch_size: patch side in pixels (8 and 16 for DINO, 14 for DINOv2, 16 for DINOv3).
        img_size: side of the image the position-embedding grid is created for; inputs of
            any size (multiples of ``patch_size``) work through interpolation (learned
            positions) or by recomputing the rotary angles (``dinov3``).
        depth / embed_dim / num_heads: overrides of the arch's values (tiny CPU presets).
        cls_token: prepend a [CLS] token (SelfPatch and FLSL use ``False``).
        num_registers: register tokens after the CLS token (None: the family's default, 0
            for ``vit`` and ``dinov2``, 4 for ``dinov3``).
        final_norm: apply the final LayerNorm in :meth:`ViTBackbone.tokens` (SelfPatch keeps
            it in its head: ``False``).
        drop_path_rate: stochastic depth, linear from 0 to this over the blocks.
        pos_interp: ``"timm"`` (timm's antialiased bicubic resampling), ``"dino"``
            (the official DINO and DINOv2 formula; bit-compatible with their features at any
            size) or ``"bilinear"`` (antialiased bilinear, ``jax.image.resize``: the official
            LOCA). Ignored by ``dinov3`` (no table to resample).
        grad_checkpointing: recompute each block's activations in the backward pass instead
            of keeping them (activation checkpointing): ~1/3 more compute for a much smaller
            activation memory; for ViT-B/L or large batches. Training-time only, the weights
            are unchanged.
        act_layer: the blocks' MLP activation: ``"gelu"`` (exact, erf: timm, DINO, DINOv2/3)
            or ``"gelu_tanh"`` (the tanh approximation: Flax's ``nn.gelu`` default, so the
            official LOCA code; about 1e-3 per layer from the exact one). Exports carry it in
            ``timm_kwargs``. ``vit`` and ``dinov2`` only.
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
    family: str = "vit"
    num_registers: int | None = None

    def __post_init__(self) -> None:
        _check_choice("family", self.family, tuple(FAMILIES))
        _check_choice("act_layer", self.act_layer, ACT_LAYERS)
        _check_choice("pos_interp", self.pos_interp, POS_INTERP)
        _check_choice("attention", self.attention, ATTENTION_MODES)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {brief(self.arch)}; choose one of {sorted(ARCHS)}")
        for name in ("patch_size", "img_size", "depth", "embed_dim", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.num_registers is not None and not 0 <= self.num_registers <= 64:
            raise ValueError(f"num_registers must be in 0..64, got {self.num_registers}")
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
        if FAMILIES[self.family].rope:
            if self.act_layer != "gelu":
                raise ValueError(f"family {self.family} has no act_layer option (exact GELU)")
            if (self.resolved_embed_dim // self.resolved_num_heads) % 4:
                raise ValueError(
                    f"family {self.family}: the head width embed_dim/num_heads = "
                    f"{self.resolved_embed_dim}/{self.resolved_num_heads} must be a multiple "
                    "of 4 (2-D rotary embeddings)"
                )

    @property
    def resolved_embed_dim(self) -> int:
        return self.embed_dim if self.embed_dim is not None else ARCHS[self.arch][0]

    @property
    def resolved_depth(self) -> int:
        return self.depth if self.depth is not None else ARCHS[self.arch][1]

    @property
    def resolved_num_heads(self) -> int:
        return self.num_heads if self.num_heads is not None else ARCHS[self.arch][2]

    @property
    def resolved_num_registers(self) -> int:
        if self.num_registers is not None:
            return self.num_registers
        return FAMILIES[self.family].default_registers

    @property
    def num_prefix_tokens(self) -> int:
        """CLS (if any) plus registers: the tokens before the patch grid."""
        return int(self.cls_token) + self.resolved_num_registers


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {brief(value)}")


def _timm_name(config: BackboneConfig) -> str:
    family = FAMILIES[config.family]
    for pattern in family.timm_names:
        name = pattern.format(arch=config.arch, patch=config.patch_size)
        if timm.is_model(name):
            return name
    raise ValueError(f"timm {timm.__version__} has no model for family {config.family}")


def timm_spec_for(config: BackboneConfig) -> dict[str, Any]:
    """timm architecture name and ``create_model`` kwargs for ``config``.

    Every size and structure setting is passed explicitly, so
    ``timm.create_model(spec["architecture"], **spec["kwargs"])`` rebuilds exactly this
    backbone (what :mod:`densessl.export` writes to ``meta.json``).
    """
    family = FAMILIES[config.family]
    name = _timm_name(config)
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True}
    if family.name == "vit":  # the historical spec: only what differs from the timm model
        if f"_patch{config.patch_size}_" not in name:
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
    else:
        kwargs.update(
            patch_size=config.patch_size,
            img_size=config.img_size,
            embed_dim=config.resolved_embed_dim,
            depth=config.resolved_depth,
            num_heads=config.resolved_num_heads,
        )
    registers = config.resolved_num_registers
    if family.model_class == "eva":
        kwargs["num_reg_tokens"] = registers
        if not config.cls_token:
            kwargs["class_token"] = False
        if not config.final_norm:
            kwargs["use_post_transformer_norm"] = False
    else:
        kwargs["reg_tokens"] = registers
        kwargs["no_embed_class"] = registers > 0
        if family.name == "vit" and registers == 0:
            del kwargs["reg_tokens"], kwargs["no_embed_class"]
        if not config.cls_token:
            kwargs["class_token"] = False
        if not config.final_norm:
            kwargs["final_norm"] = False
        if config.act_layer != "gelu":
            kwargs["act_layer"] = config.act_layer
    return {"architecture": name, "kwargs": kwargs, "pos_interp": config.pos_interp}


def describe_config(config: BackboneConfig) -> str:
    """``vit_small/16 (384-d, 12 blocks, 6 heads, cls)`` style summary."""
    prefix = "cls" if config.cls_token else "no cls"
    registers = config.resolved_num_registers
    if registers:
        prefix += f" + {registers} registers"
    family = "" if config.family == "vit" else f"{config.family} "
    return (
        f"{family}{config.arch}/{config.patch_size} ({config.resolved_embed_dim}-d, "
        f"{config.resolved_depth} blocks, {config.resolved_num_heads} heads, {prefix})"
    )
