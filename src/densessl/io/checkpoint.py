"""Checkpoints: atomic writes, exact resume, weights-only warm starts.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code can run). It is written to a
temporary file in the same folder, flushed to disk and renamed over the target, so a crash
at any moment leaves either the previous checkpoint or the new one — never half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from densessl.errors import ConfigError
from densessl.io.writes import RecordingWriter, disk_full_named

FORMAT = "densessl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a usable checkpoint; the message names the file."""


def save_atomic(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        DiskFullError: the file system is full; the message names the folder, and the
            previous file at ``path`` is untouched (no temp file is left).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    handle = os.fdopen(fd, "wb")
    writer = RecordingWriter(handle)  # keeps the OSError that torch.save turns into a RuntimeError
    try:
        with disk_full_named(path, writer=writer, kept=True), handle:
            torch.save(obj, writer)
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
    """Load a checkpoint-like file safely (``weights_only=True``) with a clear error.

    ``.safetensors`` files (timm's and Hugging Face's layout) are read as a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        with _namespace_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a loadable PyTorch checkpoint ({_load_failure(err)}). densessl only "
            "loads files with tensors and plain values (weights_only=True; argparse.Namespace "
            "is allowed for DINO's args)."
        ) from err
    _check_namespaces(obj, path, "the file", 0)
    return obj


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's message bolds a warning


def _load_failure(err: Exception) -> str:
    """Why ``torch.load`` failed, in a few words (not torch's advice to drop weights_only)."""
    text = _ANSI.sub("", str(err))
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"it holds {refused.group(1)}, a class densessl does not load"
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if unpickler:
        return f"not a checkpoint: {unpickler.group(1).strip()}"
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    first = text.strip().split(". ")[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


#: What an ``argparse.Namespace`` in a checkpoint may hold (and lists / dicts of it).
_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 32


def _namespace_allowed() -> contextlib.AbstractContextManager[Any]:
    """Allow ``argparse.Namespace`` — and no other class — for one ``weights_only`` load.

    Official DINO's ``main_dino.py`` saves its command-line ``args`` as a Namespace in every
    full training checkpoint; the unpickler still refuses every other class (and so any
    class a crafted Namespace would hold), and :func:`_check_namespaces` its values.
    """
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: no scoped form
    return contextlib.nullcontext()


def _non_plain(value: Any, where: str, depth: int) -> tuple[str, str] | None:
    """``(where, type name)`` of the first value that is not plain, or None."""
    if depth > _MAX_DEPTH:
        return where, "a structure nested too deeply"
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (found := _non_plain(item, f"{where}[{i}]", depth + 1)) is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_plain(key, f"{where} (a key)", depth + 1) or _non_plain(
                item, f"{where}[{key!r}]", depth + 1
            )
            if found is not None:
                return found
        return None
    return where, type(value).__name__


def _check_namespaces(obj: Any, path: Path, where: str, depth: int) -> None:
    """Refuse an ``argparse.Namespace`` anywhere in ``obj`` that holds more than plain values
    (numbers, strings, booleans, None and lists / dicts of them)."""
    if depth > _MAX_DEPTH or isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, argparse.Namespace):
        for key, value in vars(obj).items():
            found = _non_plain(value, f"{where}.{key}", depth + 1)
            if found is not None:
                raise CheckpointError(
                    f"{path}: {found[0]} (in an argparse.Namespace, like DINO's 'args') is "
                    f"{found[1]!r}; densessl accepts only numbers, strings, booleans, None "
                    "and lists or dicts of them there"
                )
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_namespaces(value, path, f"{where}[{key!r}]" if depth else str(key), depth + 1)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_namespaces(value, path, f"{where}[{i}]", depth + 1)


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
        ValueError: ``which`` is invalid, the weights are missing or not tensors, or no (or
            more than one) student backbone is found.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    teacher = _tensor_dict(state, "backbone")
    if which == "student":
        model = _tensor_dict(state, "model")
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
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer densessl (format {version!r}); "
            "upgrade densessl to read it"
        )
    check_training_state(state, path)
    return state


@contextlib.contextmanager
def entries_fit(path: Path | str) -> Iterator[None]:
    """Loading a checkpoint's entries into a run's model, optimiser, scaler and RNG: an entry
    that does not fit (wrong shapes, keys or types: a damaged or crafted file whose config
    matched) becomes a :class:`CheckpointError` naming the file, not a ``RuntimeError``."""
    try:
        yield
    except (CheckpointError, ConfigError):
        raise
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        raise CheckpointError(
            f"{path} does not fit this run ({type(err).__name__}: {'; '.join(lines[:3])}); it "
            "is damaged or was not written for this configuration. Resume from another "
            "checkpoint (checkpoints/step_*.pt) or start a new --out"
        ) from err


def _tensor_dict(state: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
    """``state[key]`` as a dict of tensors, or ``ValueError`` saying what is there instead."""
    value = state.get(key)
    if not isinstance(value, dict) or not value:
        found = "nothing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        raise ValueError(f"the checkpoint's {key!r} entry should hold weights, found {found}")
    odd = [str(k) for k, v in value.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if odd:
        raise ValueError(f"the checkpoint's {key!r} entry holds non-tensors: {odd[:5]}")
    return value


def check_training_state(state: dict[str, Any], path: Path | str) -> None:
    """Refuse a densessl checkpoint with missing or malformed entries (``CheckpointError``
    naming the entry), before any of it is loaded into a model or optimiser."""
    problems = []
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        problems.append(f"'step' is {str(step)[:40]!r}, not a step number")
    for key in ("model", "backbone"):
        try:
            _tensor_dict(state, key)
        except ValueError as err:
            problems.append(str(err).removeprefix("the checkpoint's "))
    if not isinstance(state.get("config"), dict):
        problems.append("'config' is missing")
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and {"state", "param_groups"} <= set(optimizer)):
        problems.append("'optimizer' is missing or not an optimizer state")
    rng = state.get("rng")
    if not (isinstance(rng, dict) and torch.is_tensor(rng.get("torch"))):
        problems.append("'rng' is missing or holds no torch RNG state")
    elif rng["torch"].dtype != torch.uint8:
        problems.append(f"'rng' holds a {rng['torch'].dtype} tensor, not a byte RNG state")
    if problems:
        raise CheckpointError(
            f"{path} is a damaged densessl checkpoint: {'; '.join(problems)}. Resume from "
            "another checkpoint (checkpoints/step_*.pt) or start a new --out"
        )
