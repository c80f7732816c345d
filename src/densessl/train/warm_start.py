"""Warm start: load backbone weights into a method's student and teacher (``--init``).

Accepts a densessl run directory or checkpoint (its EMA-teacher backbone is used), an
official DINO, DINOv2 or DINOv3 checkpoint (backbone-only or full training checkpoint), a
timm-layout file of any family, or a released SelfPatch, Leopart, LOCA (Flax) or FLSL
checkpoint (:mod:`densessl.models.formats`; teacher network), or a backbone shipped with the
package (``densessl:NAME``, :mod:`densessl.models.shipped`). Heads, prototypes and optimiser
state start fresh; for an exact continuation of a run use the same ``--out``.

Methods whose backbone has no CLS token (SelfPatch, FLSL, LOCA) start from a file with one by
dropping it: the ``cls_token`` and, where the position table has a CLS slot, that slot. A
backbone built without the final LayerNorm (SelfPatch keeps it in its head) ignores the file's
``norm.*``. Registers are kept (the configured backbone must have as many).
"""

from __future__ import annotations

from pathlib import Path

import torch

from densessl.io.checkpoint import FORMAT, CheckpointError, training_backbone_weights
from densessl.io.paths import user_path
from densessl.methods.base import Method
from densessl.models.formats.detect import convert, read_checkpoint
from densessl.models.loading import load_timm_weights
from densessl.models.run_arch import run_backbone_config
from densessl.models.shipped import is_shipped, resolve_shipped
from densessl.models.vit import ViTBackbone


def resolve_weights_file(source: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``, ``densessl:NAME`` the shipped
    export's ``model.safetensors`` (:mod:`densessl.models.shipped`); a file is used as is."""
    if is_shipped(source):
        return resolve_shipped(str(source)) / "model.safetensors"
    path = user_path(source)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt")
        return candidate
    return path


def backbone_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """timm-layout backbone weights from a densessl checkpoint, an official DINO file or a
    released checkpoint of another method (:mod:`densessl.models.formats`).

    For a run directory its ``config.yaml`` must agree with the checkpoint's own config
    (:func:`~densessl.models.run_arch.run_backbone_config`)."""
    path = resolve_weights_file(source)
    state = read_checkpoint(path)  # torch (weights_only) or Flax msgpack; --format honoured
    if isinstance(state, dict) and state.get("format") == FORMAT:
        if not is_shipped(source) and user_path(source).is_dir():
            run_backbone_config(user_path(source), state, path)
        return training_backbone_weights(state, "teacher")
    return convert(state, path).weights  # CheckpointError naming the file and the format


def warm_start(method: Method, source: str | Path) -> None:
    """Load ``source``'s backbone weights into the student and the teacher backbones.

    Loading is strict: weights that do not fit the configured backbone (other depth, width,
    patch size or CLS token) stop with an error naming the file; position embeddings are
    resampled to the configured grid.
    """
    weights = backbone_weights(source)
    for backbone in (method.student_backbone(), method.teacher_backbone()):
        load_timm_weights(backbone, fitted_prefix(weights, backbone), str(source))


def fitted_prefix(weights: dict[str, torch.Tensor], backbone: ViTBackbone) -> dict:
    """``weights`` for a ``backbone`` without CLS token or final norm: the CLS token with its
    position slot, and the final norm, dropped where the backbone has none."""
    if not backbone.config.final_norm and "norm.weight" in weights:
        weights = {k: v for k, v in weights.items() if not k.startswith("norm.")}
    if backbone.has_cls_token or "cls_token" not in weights:
        return weights
    weights = {k: v for k, v in weights.items() if k != "cls_token"}
    pos = weights.get("pos_embed")
    if pos is not None and "reg_token" not in weights:  # the table has the CLS slot first
        weights["pos_embed"] = pos[:, 1:]
    return weights
