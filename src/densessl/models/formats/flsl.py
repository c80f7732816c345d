"""FLSL releases (QingSuML/FLSL @acb5d6f): DINO-style checkpoints of a CLS-free ViT.

``vision_transformer.make_vit_noclass`` turns DINO's ViT into FLSL's: ``pos_embed`` loses its
CLS slot (``[1, N, D]``, N a square), the ``cls_token`` parameter stays in the state dict
(frozen, never used) and the final ``norm`` is kept (``--post_layernorm True``, the default;
``False`` replaces it by an identity, so no ``norm.*`` keys). ``main_flsl.py`` saves
``{student, teacher, optimizer, epoch, args, flsl_loss, fp16_scaler}`` with ``module.backbone.``
/ ``backbone.`` prefixes and FLSL's projection ``head.``; ``utils.load_pretrained_weights``
strips both prefixes.

The backbone is built with ``cls_token=False`` (the unused token is dropped, as
:attr:`Converted.extras`), ``final_norm`` as the file says, DINO's position resampling
(``interpolate_pos_encoding_no_class``).
"""

from __future__ import annotations

import math
from typing import Any

from densessl.models.dino_compat import describe, select_state_dict
from densessl.models.formats.common import Converted, require_keys, stripped_tensors

__all__ = ["NAME", "looks_like", "to_timm"]

NAME = "flsl"
HEAD_PREFIXES = ("head.", "fc_norm.")


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def looks_like(obj: Any) -> bool:
    """A ``cls_token`` next to a ``pos_embed`` without a CLS slot (a square token count) and
    no registers (timm's register models also leave the CLS slot out)."""
    try:
        keys = stripped_tensors(select_state_dict(obj, "teacher"))
    except ValueError:
        return False
    pos = keys.get("pos_embed")
    square = pos is not None and pos.ndim == 3 and _square(pos.shape[1])
    return "cls_token" in keys and "reg_token" not in keys and square


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """The ``which`` network's backbone in timm keys.

    Raises:
        ValueError: not an FLSL backbone (the message says what is missing or different).
    """
    state = select_state_dict(obj, which)
    tensors = stripped_tensors(state)
    weights = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES)}
    require_keys(weights, "FLSL checkpoint (QingSuML/FLSL)", state)
    pos = weights["pos_embed"]
    if pos.ndim != 3 or not _square(pos.shape[1]):
        raise ValueError(
            f"looks like an FLSL checkpoint but pos_embed is {list(pos.shape)}: FLSL's "
            f"CLS-free ViT has [1, N, D] with N a square; found {describe(state)}. "
            "Try --format dino"
        )
    extras = {k: weights.pop(k) for k in ("cls_token",) if k in weights}
    fields = {"cls_token": False, "final_norm": "norm.weight" in weights, "pos_interp": "dino"}
    return Converted(NAME, weights, fields, extras)
