"""Warm start: load backbone weights into a method's student and teacher (``--init``).

Accepts a densessl run directory or checkpoint (its EMA-teacher backbone is used), an
official DINO checkpoint (backbone-only or full training checkpoint) or a released SelfPatch,
Leopart, LOCA (Flax) or FLSL checkpoint (:mod:`densessl.models.formats`; teacher network).
Heads, prototypes and optimiser state start fresh; for an exact continuation of a run use the
same ``--out``.
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


def resolve_weights_file(source: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``; a file is used as is."""
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
        if user_path(source).is_dir():
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
        load_timm_weights(backbone, weights, str(source))
