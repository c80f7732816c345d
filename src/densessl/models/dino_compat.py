"""DINO compatibility: official checkpoints → timm ViT state dicts, DINO's pos-embed resampling.

The official DINO ViT (facebookresearch/dino @7c446df5, ``vision_transformer.py``) uses the
same parameter names as timm's ``VisionTransformer``: ``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`` and
``norm.*``. Converting is therefore a matter of finding the backbone inside the file:

* backbone-only releases (``dino_deitsmall16_pretrain.pth``): the state dict itself;
* full training checkpoints ``{"student", "teacher", "optimizer", "epoch", ...}``: the
  chosen network (teacher by default), with the ``module.`` (DDP) and ``backbone.``
  (``MultiCropWrapper``) prefixes removed and the projection ``head.*`` dropped;
* state dicts wrapped under ``state_dict`` or ``model``.

:func:`resample_pos_embed` resamples position embeddings to another token grid either the timm
way or exactly as DINO's ``interpolate_pos_encoding`` (L174-194).

Nothing here builds a model; :func:`densessl.models.loading.load_backbone` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor

#: Keys every supported ViT state dict has (timm/DINO layout).
REQUIRED_KEYS = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
#: One of these position keys: a learned table, or the registers / RoPE periods of a RoPE
#: model (timm Eva, official DINOv3).
POSITION_KEYS = ("pos_embed", "reg_token", "storage_tokens", "rope_embed.periods")
#: Prefixes stripped from every key: DDP, DINO's MultiCropWrapper, torch.compile.
STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.")
#: Keys (after stripping) that belong to heads, not to the backbone.
HEAD_PREFIXES = ("head.", "fc_norm.")
#: Wrappers some training frameworks put around a state dict.
WRAPPER_KEYS = ("state_dict", "model")
#: Standard sizes: embed_dim → (arch, num_heads); all have head dim 64.
STANDARD_WIDTHS = {
    192: ("vit_tiny", 3),
    384: ("vit_small", 6),
    768: ("vit_base", 12),
    1024: ("vit_large", 16),
    1280: ("vit_huge", 16),
}


def describe(obj: Any, limit: int = 8) -> str:
    """A short description of what a loaded file contains, for error messages."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:limit]]
        more = f" (+{len(obj) - limit} more)" if len(obj) > limit else ""
        return f"a dict with {len(obj)} keys {keys}{more}"
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"an object of type {type(obj).__name__}"


def _looks_like_vit(state: Mapping[str, Any]) -> bool:
    keys = {_strip(str(k)) for k in state}
    return all(k in keys for k in REQUIRED_KEYS) and any(k in keys for k in POSITION_KEYS)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def select_state_dict(obj: Any, which: str = "teacher") -> Mapping[str, Any]:
    """Find the backbone state dict inside a loaded checkpoint object.

    Args:
        obj: what ``torch.load`` returned.
        which: ``"teacher"`` or ``"student"``, used for full training checkpoints.

    Returns:
        The (still prefixed) state dict of the chosen network.

    Raises:
        ValueError: ``which`` is invalid, or the object holds no state dict.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    current = obj
    for _ in range(4):  # e.g. {"model": {"teacher": {...}}}
        if not isinstance(current, Mapping):
            raise ValueError(f"expected a dict of tensors, found {describe(current)}")
        if _looks_like_vit(current):
            return current
        if any(isinstance(current.get(k), Mapping) for k in ("teacher", "student")):
            if not isinstance(current.get(which), Mapping):
                raise ValueError(
                    f"the training checkpoint has no {which!r} network; found {describe(current)}"
                )
            current = current[which]
            continue
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if wrapper is None:
            break
        current = current[wrapper]
    if not isinstance(current, Mapping):
        raise ValueError(f"expected a dict of tensors, found {describe(current)}")
    return current


def dino_state_dict_to_timm(state_dict: Any, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Convert an official DINO checkpoint (any of its layouts) to timm ViT keys.

    Args:
        state_dict: a loaded checkpoint: a backbone state dict, a full DINO training
            checkpoint (``student``/``teacher`` entries with ``module.``/``backbone.``
            prefixes and ``head.`` keys) or a dict wrapping one under ``state_dict``/``model``.
        which: network of a full training checkpoint: ``"teacher"`` (default, the one DINO
            evaluates and releases) or ``"student"``.

    Returns:
        ``{timm key: tensor}`` for the backbone only (head keys dropped).

    Raises:
        ValueError: the object is not a ViT checkpoint; the message lists what was found and
            which keys were expected.
    """
    state = select_state_dict(state_dict, which)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _strip(str(key))
        if name.startswith(HEAD_PREFIXES) or not isinstance(value, torch.Tensor):
            continue
        out[name] = value
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if not any(k in out for k in POSITION_KEYS):
        missing.append("pos_embed")
    if missing:
        raise ValueError(
            f"not a DINO/timm ViT state dict: missing {missing}; expected keys like "
            "cls_token, pos_embed, patch_embed.proj.weight, blocks.N.attn.qkv.weight, "
            f"norm.weight; found {describe(state)}"
        )
    return out


def infer_vit_fields(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the architecture of a timm-layout ViT state dict from its tensor shapes.

    Args:
        state: timm keys (output of :func:`dino_state_dict_to_timm` or of a family
            converter in :mod:`densessl.models.formats`).

    Returns:
        ``BackboneConfig`` fields: ``family`` (``dinov3`` for timm's Eva layout with rotary
        positions, ``dinov2`` when the blocks have layer scale, else ``vit``),
        ``num_registers``, ``patch_size``, ``embed_dim``, ``depth``, ``img_size`` (the
        position-embedding grid times the patch size; 224 without a table),
        ``cls_token``, ``final_norm`` and, for the standard widths (192/384/768/1024/1280),
        ``arch`` and ``num_heads``.

    Raises:
        ValueError: a shape this library cannot build (non-square patches or grid, MLP ratio
            other than 4, layer scale in a plain ViT).
    """
    proj = state["patch_embed.proj.weight"]  # [D, 3, p, p]
    embed_dim, _, ph, pw = proj.shape
    if ph != pw:
        raise ValueError(f"non-square patches {ph}x{pw} are not supported")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    cls_token = "cls_token" in state
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    if "blocks.0.gamma_1" in state or "pos_embed" not in state:
        family = "dinov3"
    elif "blocks.0.ls1.gamma" in state:
        family = "dinov2"
    else:
        family = "vit"
    hidden = state.get("blocks.0.mlp.fc1.weight")
    if hidden is not None and hidden.shape[0] != 4 * embed_dim:
        raise ValueError(f"MLP width {hidden.shape[0]} is not 4 x embed_dim ({embed_dim})")
    fields: dict[str, Any] = {
        "family": family,
        "num_registers": registers,
        "patch_size": int(ph),
        "embed_dim": int(embed_dim),
        "depth": depth,
        "img_size": 224 // int(ph) * int(ph) or int(ph),
        "cls_token": cls_token,
        "final_norm": "norm.weight" in state,
    }
    if "pos_embed" in state:
        num_pos = state["pos_embed"].shape[1] - (1 if cls_token and not registers else 0)
        grid = math.isqrt(num_pos)
        if grid * grid != num_pos:
            raise ValueError(f"pos_embed has {num_pos} patch positions, not a square grid")
        fields["img_size"] = grid * int(ph)
    if embed_dim in STANDARD_WIDTHS:
        fields["arch"], fields["num_heads"] = STANDARD_WIDTHS[embed_dim]
    return fields


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix: int,
    mode: str,
) -> Tensor:
    """Resample the patch part of a position embedding to another token grid.

    Args:
        pos_embed: ``[1, num_prefix + old_h*old_w, D]``.
        new_grid: target ``(h, w)``.
        old_grid: the grid ``pos_embed`` was trained for.
        num_prefix: leading entries kept as they are (1 for the CLS slot, else 0).
        mode: ``"timm"`` (``timm.layers.resample_abs_pos_embed``), ``"dino"`` (official DINO:
            ``interpolate(scale_factor=((h + 0.1) / old_h, (w + 0.1) / old_w), mode="bicubic")``)
            or ``"bilinear"`` (antialiased bilinear to the target size, half-pixel centres:
            ``jax.image.resize(..., "bilinear")``, as the official LOCA code).

    Returns:
        ``[1, num_prefix + h*w, D]``; ``pos_embed`` itself when the grids are equal.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    if mode == "timm":
        return resample_abs_pos_embed(
            pos_embed,
            new_size=list(new_grid),
            old_size=list(old_grid),
            num_prefix_tokens=num_prefix,
        )
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = patch.shape[-1]
    grid = patch.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    if mode == "bilinear":
        grid = F.interpolate(
            grid, size=tuple(new_grid), mode="bilinear", align_corners=False, antialias=True
        )
        patch = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
        return torch.cat([prefix, patch], dim=1)
    # DINO adds 0.1 to avoid a floating-point off-by-one in the output size (dino issue #8);
    # the scale factor (not the size) then also sets the sampling positions.
    scale = ((new_grid[0] + 0.1) / old_grid[0], (new_grid[1] + 0.1) / old_grid[1])
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic")
    if tuple(grid.shape[-2:]) != tuple(new_grid):  # pragma: no cover - guarded by DINO's +0.1
        raise RuntimeError(f"pos_embed resampled to {tuple(grid.shape[-2:])}, wanted {new_grid}")
    patch = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patch], dim=1)
