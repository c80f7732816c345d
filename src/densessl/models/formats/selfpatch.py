"""SelfPatch releases (alinlab/SelfPatch @81aef14): a DINO-style ViT-S/16 **without** a CLS
token or final LayerNorm, plus SelfPatch's heads.

``selfpatch_vision_transformer.py`` builds ``VisionTransformer`` with ``pos_embed [1, N, D]``
(no CLS slot), DINO's block names and no ``norm``; ``main_selfpatch.py``'s ``MultiCropWrapper``
holds it as ``backbone`` next to ``ca_head`` (``SelfPatchHead``: its own ``cls_token``, two
class-attention blocks ``cls_blocks.{0,1}`` and ``norm``), ``c_head`` and ``p_head`` (DINO
heads). Files are DINO-style: a full training checkpoint ``{student, teacher, optimizer,
epoch, args, ...}`` (``module.``-prefixed student) or one network's state dict.

The patch features SelfPatch evaluates (``eval_video_segmentation.py``:
``get_intermediate_layers(x)[0]``) are the backbone's last block output, unnormalised: the
backbone is built with ``cls_token=False, final_norm=False`` and DINO's position resampling.
The class-attention head only ever sees these tokens; a timm ViT has no place for it, so its
weights are returned as :attr:`Converted.extras` (``ca_head.*``, official names) and left out
of the backbone, its evaluation and its export.
"""

from __future__ import annotations

from typing import Any

from densessl.models.dino_compat import describe, select_state_dict
from densessl.models.formats.common import Converted, require_keys, stripped_tensors

__all__ = ["HEAD_PREFIXES", "NAME", "looks_like", "to_timm"]

NAME = "selfpatch"
#: SelfPatch's heads in its MultiCropWrapper (and DINO's ``head.``).
HEAD_PREFIXES = ("ca_head.", "c_head.", "p_head.", "head.")


def _network(obj: Any, which: str) -> dict[str, Any]:
    try:
        return stripped_tensors(select_state_dict(obj, which))
    except ValueError:
        return {}


def looks_like(obj: Any) -> bool:
    """SelfPatch's class-attention head is there, or a DINO-style ViT without CLS token and
    without final norm."""
    keys = set(_network(obj, "teacher"))
    if any(k.startswith("ca_head.") for k in keys):
        return True
    return (
        "blocks.0.attn.qkv.weight" in keys
        and "pos_embed" in keys
        and "cls_token" not in keys
        and "norm.weight" not in keys
    )


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """The ``which`` network's backbone in timm keys (heads in ``extras``).

    Raises:
        ValueError: no SelfPatch backbone in ``obj`` (the message says what is missing).
    """
    state = select_state_dict(obj, which)
    tensors = stripped_tensors(state)
    weights = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES)}
    extras = {k: v for k, v in tensors.items() if k.startswith("ca_head.")}
    require_keys(weights, "SelfPatch checkpoint (alinlab/SelfPatch)", state)
    if "cls_token" in weights:
        raise ValueError(
            "looks like a SelfPatch checkpoint but its backbone has a cls_token (SelfPatch's "
            f"ViT has none); found {describe(state)}. Try --format dino"
        )
    pos = weights["pos_embed"]
    if pos.ndim != 3:
        raise ValueError(f"SelfPatch pos_embed should be [1, N, D], found {tuple(pos.shape)}")
    fields = {"cls_token": False, "final_norm": "norm.weight" in weights, "pos_interp": "dino"}
    return Converted(NAME, weights, fields, extras)
