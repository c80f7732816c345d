"""Architecture claims checked against the weights before a model is allocated.

A file's metadata (an export's ``meta.json``, a checkpoint's saved config) says which ViT to
build; :func:`check_config_fits` compares that with the tensor shapes *before*
:func:`~densessl.models.vit.build_backbone` runs, so a ``meta.json`` claiming
``embed_dim=49152`` is refused in milliseconds instead of allocating 29 GB first. What the
shapes fix is checked exactly: width (``patch_embed.proj.weight``, ``pos_embed``, every
``qkv``), patch size, input channels, depth, the CLS token and (exports) the position grid.
``num_heads`` leaves no trace in the shapes of a timm ViT; the ``qkv`` width bounds it (it
must divide the width), and an export's three copies of it (``meta.json``, its ``backbone``
config and ``timm_kwargs``) must agree (:func:`check_export_meta`). Absurd sizes are refused
whatever the weights say (:func:`check_buildable`).

Every refusal is a :class:`~densessl.io.checkpoint.CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import BackboneConfig, describe_config

__all__ = [
    "MAX_PARAMETERS",
    "check_buildable",
    "check_config_fits",
    "check_export_meta",
    "export_config",
]

#: The largest backbone built from a file's description (ViT-g/14 has 1.0e9 parameters).
MAX_PARAMETERS = 3_000_000_000
#: The largest position grid built from a file's description (256 x 256 tokens).
MAX_TOKENS = 65_536
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def estimated_parameters(config: BackboneConfig) -> int:
    """Parameters of the ViT ``config`` describes (blocks, patch embedding, positions)."""
    width, depth = config.resolved_embed_dim, config.resolved_depth
    tokens = (config.img_size // config.patch_size) ** 2 + int(config.cls_token)
    block = 12 * width * width + 13 * width  # qkv, proj, 4x MLP, two LayerNorms, biases
    return depth * block + tokens * width + 3 * config.patch_size**2 * width + 3 * width


def check_buildable(config: BackboneConfig, source: str) -> None:
    """Refuse a description too large to be a real backbone (before any allocation)."""
    tokens = (config.img_size // config.patch_size) ** 2
    if tokens > MAX_TOKENS:
        raise CheckpointError(
            f"{source}: img_size {config.img_size} with patch_size {config.patch_size} means "
            f"{tokens:,} position tokens (more than {MAX_TOKENS:,}); refusing to build it"
        )
    count = estimated_parameters(config)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source}: the described ViT (embed_dim {config.resolved_embed_dim}, depth "
            f"{config.resolved_depth}) would have {count / 1e9:.1f}e9 parameters "
            f"({count * 4 / 2**30:.0f} GiB in float32), more than any real backbone; "
            "refusing to build it"
        )


def _shape(weights: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = weights.get(key)
    return tuple(value.shape) if isinstance(value, Tensor) else None


def check_config_fits(
    config: BackboneConfig,
    weights: Mapping[str, Any],
    source: str,
    exact_grid: bool = False,
) -> None:
    """Refuse ``config`` unless the tensor shapes of ``weights`` (timm layout) agree with it.

    Args:
        config: the architecture a file describes.
        weights: the backbone's state dict (no ``model.`` prefix).
        source: the file, for messages.
        exact_grid: also require the position grid of ``config.img_size`` (exports: the
            weights were saved at it); otherwise ``pos_embed`` may be resampled.

    Raises:
        CheckpointError: a value that is not a tensor, a mismatch (all listed), or an absurd
            size (:func:`check_buildable`).
    """
    odd = [str(k) for k, v in weights.items() if not isinstance(v, Tensor)]
    if odd:
        raise CheckpointError(f"{source}: entries that are not tensors: {odd[:5]}")
    width, depth, p = config.resolved_embed_dim, config.resolved_depth, config.patch_size
    problems = []
    proj = _shape(weights, "patch_embed.proj.weight")
    if proj is None or len(proj) != 4:
        problems.append(f"patch_embed.proj.weight is {proj}, expected [embed_dim, 3, p, p]")
    else:
        shown = f"patch_embed.proj.weight is {list(proj)}"
        if proj[0] != width:
            problems.append(f"embed_dim {width} but {shown}")
        if proj[2:] != (p, p):
            problems.append(f"patch_size {p} but {shown}")
        if proj[1] != 3:
            problems.append(f"3 input channels but {shown}")
    blocks = {int(m.group(1)) for k in weights if (m := _BLOCK.match(str(k)))}
    if len(blocks) != depth or blocks != set(range(len(blocks))):
        problems.append(f"depth {depth} but the weights hold blocks {_ranges(blocks)}")
    for i in sorted(blocks)[:64]:
        qkv = _shape(weights, f"blocks.{i}.attn.qkv.weight")
        if qkv is not None and qkv != (3 * width, width):
            problems.append(f"embed_dim {width} but blocks.{i}.attn.qkv.weight is {list(qkv)}")
            break
    if ("cls_token" in weights) != config.cls_token:
        holds = "hold a cls_token" if "cls_token" in weights else "hold no cls_token"
        problems.append(f"cls_token={config.cls_token} but the weights {holds}")
    regs = _shape(weights, "reg_token")
    held = regs[1] if regs is not None and len(regs) == 3 else 0
    if held != config.resolved_num_registers:
        problems.append(
            f"num_registers={config.resolved_num_registers} but the weights hold {held} "
            "register tokens"
        )
    pos = _shape(weights, "pos_embed")
    if pos is not None and (len(pos) != 3 or pos[-1] != width):
        problems.append(f"embed_dim {width} but pos_embed is {list(pos)}")
    elif pos is not None and exact_grid:
        tokens = pos[1] - (config.num_prefix_tokens if config.resolved_num_registers == 0 else 0)
        grid = config.img_size // p
        if tokens != grid * grid:
            side = math.isqrt(max(tokens, 0))
            square = f" ({side}x{side})" if side * side == tokens else ""
            problems.append(
                f"img_size {config.img_size} ({grid}x{grid} patches) but pos_embed holds "
                f"{tokens} positions{square}"
            )
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit the backbone {describe_config(config)}: shape "
            f"mismatches: {'; '.join(problems[:6])}"
        )
    check_buildable(config, source)


def _ranges(values: set[int]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    return ", ".join(map(str, ordered[:8])) + (" ..." if len(ordered) > 8 else "")


_META_FIELDS = ("patch_size", "img_size", "embed_dim", "depth", "num_heads")


def check_export_meta(meta: Mapping[str, Any], config: BackboneConfig, source: str) -> None:
    """An export's ``meta.json`` states each size up to three times (top level, under
    ``backbone`` — what is built — and in ``timm_kwargs``, what plain timm builds); all must
    agree with ``config``, or the file was edited and nobody knows which value is true."""
    resolved = {
        "patch_size": config.patch_size,
        "img_size": config.img_size,
        "embed_dim": config.resolved_embed_dim,
        "depth": config.resolved_depth,
        "num_heads": config.resolved_num_heads,
    }
    kwargs = meta.get("timm_kwargs")
    places = {"meta.json": meta, "timm_kwargs": kwargs if isinstance(kwargs, Mapping) else {}}
    differing = [
        f"{where} says {key}={place[key]!r}"
        for where, place in places.items()
        for key in _META_FIELDS
        if place.get(key) is not None and place[key] != resolved[key]
    ]
    if differing:
        built = ", ".join(f"{k}={v}" for k, v in resolved.items())
        raise CheckpointError(
            f"{source}: contradicts itself: the backbone it describes has {built}, but "
            f"{'; '.join(differing[:6])}. Re-export the backbone (densessl export)"
        )


def export_config(meta: Any, weights: Mapping[str, Any], meta_path: str) -> BackboneConfig:
    """The architecture of an export, checked (:func:`check_export_meta`,
    :func:`check_config_fits` with the exact position grid) before anything is built.

    ``meta["backbone"]`` (BackboneConfig fields) is used as is; without it the architecture
    is inferred from the weights, with ``meta["num_heads"]`` for widths other than DINO's.
    """
    from densessl.models.dino_compat import infer_vit_fields

    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    try:
        fields = meta.get("backbone") or {
            **infer_vit_fields(weights),
            **({"num_heads": meta["num_heads"]} if meta.get("num_heads") is not None else {}),
        }
        fields = {"pos_interp": meta.get("pos_interp", "timm"), **fields}
        names = {f.name for f in dataclasses.fields(BackboneConfig)}
        config = BackboneConfig(**{k: v for k, v in fields.items() if k in names})
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{meta_path}: cannot determine the architecture ({err}); give it under "
            "'backbone' as BackboneConfig fields (arch, patch_size, embed_dim, num_heads, ...)"
        ) from err
    check_export_meta(meta, config, meta_path)
    check_config_fits(config, weights, meta_path, exact_grid=True)
    return config
