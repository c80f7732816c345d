"""Build a :class:`~densessl.models.vit.ViTBackbone` from weights on disk.

* :func:`load_backbone`: a file: an official DINO, DINOv2 or DINOv3 checkpoint (any of their
  layouts), a timm-layout state dict of any family (``.pth`` or ``.safetensors``, e.g. timm's
  Hugging Face files), a released SelfPatch, Leopart, LOCA (Flax) or FLSL checkpoint
  (:mod:`densessl.models.formats`) or a densessl training checkpoint;
* :func:`backbone_from_state`: the same on an already loaded checkpoint object;
* :func:`load_timm_weights`: strict load of timm-layout weights into a built backbone,
  resampling the position embedding to its grid.

Every failure is a :class:`~densessl.io.checkpoint.CheckpointError` naming the file, what was
found and what was expected. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from densessl.io.checkpoint import FORMAT, CheckpointError, training_backbone_weights
from densessl.models.arch_checks import check_config_fits
from densessl.models.dino_compat import infer_vit_fields, resample_pos_embed
from densessl.models.formats.detect import convert, read_checkpoint
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone, describe_config

__all__ = ["backbone_from_state", "load_backbone", "load_timm_weights"]


def _saved_backbone_fields(state: dict[str, Any]) -> dict[str, Any]:
    config = state.get("config")
    saved = config.get("backbone") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        return {}
    names = {f.name for f in dataclasses.fields(BackboneConfig)}
    return {k: v for k, v in saved.items() if k in names}


def load_backbone(
    path: str | Path,
    config: BackboneConfig | None = None,
    *,
    which: str = "teacher",
    pos_interp: str | None = None,
    fmt: str | None = None,
    num_heads: int | None = None,
) -> ViTBackbone:
    """Load a backbone from an official DINO or released checkpoint, or a densessl one.

    Args:
        path: a ``.pth`` file: a DINO backbone release (``dino_deitsmall16_pretrain.pth``),
            a full DINO training checkpoint (``student``/``teacher``/``optimizer``/...), a
            state dict wrapped under ``state_dict``/``model``, an official DINOv2 or DINOv3
            release (``dinov2_vits14_reg4_pretrain.pth``,
            ``dinov3_vits16_pretrain_lvd1689m-*.pth``) or training checkpoint, a timm-layout
            state dict of any family (``.pth`` or ``.safetensors``), a released checkpoint of
            another method (:mod:`densessl.models.formats`), or a densessl
            ``checkpoints/last.pt`` (its EMA-teacher backbone, or the student's).
        config: the backbone to build. ``None`` infers it from the weights: family,
            registers, patch size, width, depth, CLS token, final norm and ``img_size`` (the
            checkpoint's position grid, so nothing is resampled at load time); ``num_heads``
            comes from the standard widths (192/384/768/1024/1280, head width 64) or the
            ``num_heads`` argument. A densessl checkpoint's own saved backbone config is used
            instead when present.
        which: ``"teacher"`` (default) or ``"student"`` network of a training checkpoint.
        pos_interp: position-embedding resampling; ``None`` means the config's value, or
            the format's (``"dino"``; LOCA ``"bilinear"``) when the config is inferred.
        fmt: the file's format (:data:`densessl.models.formats.choice.FORMAT_NAMES`);
            ``None``: ``--format``, else detected from the file.
        num_heads: attention heads of an inferred config whose width is not standard.

    Returns:
        The backbone in eval mode on the CPU.

    Raises:
        CheckpointError: unreadable file, no ViT weights in it, or weights that do not fit
            ``config``; the message names the file, what was found and what was expected.
    """
    path = Path(path)
    state = read_checkpoint(path, fmt)  # weights_only / Flax msgpack; errors name the file
    return backbone_from_state(
        state, path, config, which=which, pos_interp=pos_interp, fmt=fmt, num_heads=num_heads
    )


def backbone_from_state(
    state: Any,
    source: str | Path,
    config: BackboneConfig | None = None,
    *,
    which: str = "teacher",
    pos_interp: str | None = None,
    fmt: str | None = None,
    num_heads: int | None = None,
) -> ViTBackbone:
    """:func:`load_backbone` on an already loaded checkpoint object (``source`` names it)."""
    saved: dict[str, Any] = {}
    fixed: dict[str, Any] = {}  # what a released format fixes (no CLS token, GELU, ...)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        try:
            weights = training_backbone_weights(state, which)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{source}: {err}") from err
        saved = _saved_backbone_fields(state)
    else:
        converted = convert(state, source, which=which, fmt=fmt)  # CheckpointError
        weights, fixed = converted.weights, converted.fields
    if config is None:
        try:
            fields = saved or {**infer_vit_fields(weights), "pos_interp": "dino", **fixed}
            if num_heads is not None and not saved:
                fields.update(num_heads=num_heads, arch=fields.get("arch", "vit_small"))
            if "num_heads" not in fields:
                raise ValueError(
                    f"cannot infer num_heads for embed_dim {fields['embed_dim']} (standard "
                    "widths are 192/384/768/1024/1280); pass num_heads=... or "
                    "config=BackboneConfig(embed_dim=..., num_heads=...)"
                )
            config = BackboneConfig(**fields)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: {err}") from err
    fixes = ("family", "num_registers", "cls_token", "final_norm", "act_layer")
    structure = {k: fixed[k] for k in fixes if k in fixed}
    if config.pos_interp == "dino" and "pos_interp" in fixed:  # the import default: official
        structure["pos_interp"] = fixed["pos_interp"]
    if structure:  # a given architecture (``--arch``) takes the format's structure
        config = dataclasses.replace(config, **structure)
    if pos_interp is not None:
        config = dataclasses.replace(config, pos_interp=pos_interp)
    check_config_fits(config, weights, str(source))  # a lying config: refused before building
    backbone = build_backbone(config)
    load_timm_weights(backbone, weights, source=str(source))
    return backbone.eval()


def load_timm_weights(backbone: ViTBackbone, weights: dict[str, Tensor], source: str) -> None:
    """Load timm-layout weights strictly, resampling ``pos_embed`` to the backbone's grid.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys (first few of each listed).
    """
    model = backbone.model
    weights = dict(weights)
    pos = weights.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        prefix = 0 if model.no_embed_class else backbone.num_prefix_tokens
        old = math.isqrt(pos.shape[1] - prefix)
        if old * old == pos.shape[1] - prefix and pos.shape[-1] == model.pos_embed.shape[-1]:
            weights["pos_embed"] = resample_pos_embed(
                pos,
                tuple(model.patch_embed.grid_size),
                (old, old),
                prefix,
                backbone.config.pos_interp,
            )
    own = model.state_dict()
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if shapes or missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the backbone {describe_config(backbone.config)}: "
            f"shape mismatches {shapes[:4]}, missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(weights, strict=True)
