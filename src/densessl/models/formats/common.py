"""What every format converter returns, and the key handling the PyTorch formats share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from densessl.models.dino_compat import describe

__all__ = ["Converted", "require_keys", "stripped_tensors"]

#: Prefixes every PyTorch release puts in front of backbone keys (DDP, DINO's wrapper).
PREFIXES = ("module.", "backbone.", "_orig_mod.")
#: Backbone keys every converted file must hold (timm layout).
REQUIRED = ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight")


@dataclass
class Converted:
    """A released checkpoint in timm's layout.

    Attributes:
        format: the format's name (``selfpatch``, ``leopart``, ``loca``, ``flsl``, ``dino``).
        weights: ``{timm key: tensor}`` of the backbone only.
        fields: :class:`~densessl.models.vit.BackboneConfig` fields the format fixes
            (``cls_token``, ``final_norm``, ``act_layer``, ``pos_interp``, ``num_heads``...).
        extras: weights the file holds beyond the backbone (heads), under their official
            names, for whoever wants them; the timm backbone cannot hold them.
    """

    format: str
    weights: dict[str, Tensor]
    fields: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


def strip(key: str) -> str:
    """``key`` without any of :data:`PREFIXES` (repeatedly)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


LIGHTNING_PREFIX = {"teacher": "teacher.", "student": "model."}
"""Key prefix of each network in the Lightning checkpoints of Leopart and NeCo."""


def lightning_state(obj: Any) -> Mapping[Any, Any]:
    """A Lightning checkpoint's ``state_dict`` (or ``obj`` itself when it is a bare one)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj if isinstance(obj, Mapping) else {}


def prefixed_tensors(state: Mapping[Any, Any], prefix: str) -> dict[str, Tensor]:
    """The tensors of ``state`` whose key starts with ``prefix``, under the rest of the key."""
    return {
        str(k)[len(prefix) :]: v
        for k, v in state.items()
        if str(k).startswith(prefix) and isinstance(v, Tensor)
    }


def stripped_tensors(state: Mapping[Any, Any]) -> dict[str, Tensor]:
    """The tensors of ``state`` under their stripped keys (other values are left out)."""
    return {strip(str(k)): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def require_keys(weights: Mapping[str, Any], what: str, found: Any) -> None:
    """Refuse converted weights missing one of :data:`REQUIRED` (``ValueError`` naming the
    format the file looks like, the missing keys and what the file holds)."""
    missing = [k for k in REQUIRED if k not in weights]
    if missing:
        raise ValueError(
            f"looks like a {what} but the backbone is incomplete: missing {missing}; "
            f"found {describe(found)}"
        )
