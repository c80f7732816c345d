"""Pick one network's backbone weights out of an official checkpoint, whatever its wrapping.

Official releases come as a bare backbone state dict; training checkpoints hold a teacher and a
student, either as sub-dicts (``{"teacher": {...}}``, DINO, DINOv2's ``teacher_checkpoint.pth``)
or flat with prefixes (``{"model": {"teacher.backbone.blocks.0...": ...}}``, DINOv2/DINOv3
``model_*.pth``), under DDP's ``module.`` and FSDP's block chunks (``blocks.<chunk>.<i>.``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from densessl.models.dino_compat import describe, select_state_dict
from densessl.models.formats.common import strip, stripped_tensors

__all__ = ["backbone_tensors", "network_keys"]

_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_HEADS = ("head.", "dino_head.", "ibot_head.", "fc_norm.")


def network_keys(obj: Any, which: str = "teacher") -> set[str]:
    """The un-prefixed key names of the ``which`` network in ``obj`` (empty when none)."""
    try:
        state = select_state_dict(obj, which)
    except ValueError:
        return set()
    keys = [str(k) for k in state]
    flat = f"{which}."
    if any(k.startswith(flat) for k in keys):
        keys = [k[len(flat) :] for k in keys if k.startswith(flat)]
    return {strip(k) for k in keys}


def backbone_tensors(obj: Any, which: str, marker: str) -> dict[str, Tensor]:
    """The chosen network's backbone tensors with official (un-prefixed) key names.

    Args:
        obj: what ``torch.load`` returned.
        which: ``"teacher"`` or ``"student"`` for training checkpoints.
        marker: a key every backbone of the format has (e.g. ``"patch_embed.proj.weight"``).

    Raises:
        ValueError: no backbone found (the message describes what the file holds).
    """
    state: Mapping[str, Any] = select_state_dict(obj, which)
    flat = f"{which}."
    if not any(strip(str(k)) == marker for k in state) and any(
        str(k).startswith(flat) for k in state
    ):  # {"teacher.backbone.blocks.0...": ...}
        state = {str(k)[len(flat) :]: v for k, v in state.items() if str(k).startswith(flat)}
    out = {
        _CHUNKED.sub(r"blocks.\1.", name): value
        for name, value in stripped_tensors(state).items()
        if not name.startswith(_HEADS)
    }
    if marker not in out:
        raise ValueError(f"no backbone with {marker!r} found; the file holds {describe(state)}")
    return out
