"""Checkpoints: atomic writes, exact resume, weights-only warm starts.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code can run). It is written to a
temporary file in the same folder, flushed to disk and renamed over the target, so a crash
at any moment leaves either the previous checkpoint or the new one — never half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "densessl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a usable checkpoint; the message names the file."""


def save_atomic(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Disk full, interrupt, ...: the previous file at `path` is untouched.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_file(path: Path | str) -> Any:
    """Load a checkpoint-like file safely (``weights_only=True``) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a loadable PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). densessl only loads files with "
            "tensors and plain values (weights_only=True)."
        ) from err


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(
    *,
    step: int,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    config: dict[str, Any],
    backbone_state: dict[str, torch.Tensor],
    version: str,
) -> dict[str, Any]:
    """Everything needed for an exact resume, as a weights-only-loadable dict."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "densessl_version": version,
        "step": step,
        "method": config["method"],
        "config": config,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "backbone": backbone_state,
    }


def training_backbone_weights(
    state: dict[str, Any], which: str = "teacher"
) -> dict[str, torch.Tensor]:
    """timm-layout backbone weights (no ``model.`` prefix) of a densessl training checkpoint.

    Args:
        state: a loaded densessl checkpoint (``format == FORMAT``).
        which: ``"teacher"``: the EMA-teacher backbone saved under ``"backbone"`` (what is
            evaluated and exported); ``"student"``: the student's backbone, found in the
            method's state dict (``"model"``) as the one module under a ``student`` prefix
            holding every key of the teacher backbone.

    Raises:
        ValueError: ``which`` is invalid, or no (or more than one) student backbone is found.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    teacher = state["backbone"]
    if which == "student":
        model = state.get("model") or {}
        probe = "model.patch_embed.proj.weight"
        prefixes = sorted({k[: -len(probe)] for k in model if k.endswith(probe)})
        found = [p for p in prefixes if "student" in p and all(f"{p}{k}" in model for k in teacher)]
        if len(found) != 1:
            raise ValueError(
                f"cannot find the student backbone in the checkpoint's method state: backbones "
                f"under {prefixes or 'no prefixes'}, expected exactly one under 'student...'; "
                "use which='teacher' (the EMA teacher, the default)"
            )
        teacher = {k: model[f"{found[0]}{k}"] for k in teacher}
    return {k.removeprefix("model."): v for k, v in teacher.items()}


def load_training_state(path: Path | str) -> dict[str, Any]:
    """Load a densessl training checkpoint, checking its format."""
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = list(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a densessl training checkpoint (found {keys}); expected a file "
            "written by `densessl pretrain` (checkpoints/last.pt)"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer densessl (format {state['format_version']}); "
            "upgrade densessl to read it"
        )
    return state
