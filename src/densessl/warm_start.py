"""Warm start: load backbone weights into a method's student and teacher (``--init``).

Accepts a densessl run directory or checkpoint (its EMA-teacher backbone is used) or an
official DINO checkpoint (backbone-only or full training checkpoint). Heads, prototypes and
optimiser state start fresh; for an exact continuation of a run use the same ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from densessl.backbone import ViTBackbone, dino_state_dict_to_timm
from densessl.checkpoint import FORMAT, CheckpointError, load_file
from densessl.methods.base import Method


def resolve_weights_file(source: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``; a file is used as is."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt")
        return candidate
    return path


def backbone_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """timm-layout backbone weights from a densessl checkpoint or an official DINO file."""
    path = resolve_weights_file(source)
    state = load_file(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        weights = state["backbone"]
        return {k.removeprefix("model."): v for k, v in weights.items()}
    try:
        return dino_state_dict_to_timm(state)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def load_into_backbone(
    backbone: ViTBackbone, weights: dict[str, torch.Tensor], source: str
) -> None:
    """Load timm-layout weights, resampling position embeddings to the backbone's grid."""
    from timm.layers import resample_abs_pos_embed

    model = backbone.model
    weights = dict(weights)
    if "pos_embed" in weights and weights["pos_embed"].shape != model.pos_embed.shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        target = model.patch_embed.grid_size
        weights["pos_embed"] = resample_abs_pos_embed(
            weights["pos_embed"], list(target), num_prefix_tokens=prefix
        )
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: backbone weights do not fit the configured backbone "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); "
            "check backbone.arch / patch_size / cls_token"
        )


def warm_start(method: Method, source: str | Path) -> None:
    """Load ``source``'s backbone weights into the student and the teacher backbones."""
    weights = backbone_weights(source)
    for backbone in (method.student_backbone(), method.teacher_backbone()):
        load_into_backbone(backbone, weights, str(source))
