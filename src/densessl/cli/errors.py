"""How the CLI ends: one line ``densessl: error: ...`` and exit status 2 for every user error.

A user error is something the user can fix — a config key or value, a file or folder, a
device, a dataset, a full disk, a loss that diverged — and never a traceback: the message
names the key or the file. With ``densessl --debug COMMAND`` or ``DENSESSL_DEBUG=1`` the
traceback is printed as well (exit status still 2). Anything else (a bug) keeps Python's
traceback and exit status 1.

Exit statuses: 0 done; 1 internal error (traceback); 2 user error; 130 / 143 training
stopped by SIGINT / SIGTERM after writing a checkpoint (:mod:`densessl.train.signals`; the
same command resumes); 130 also for Ctrl-C outside training.

Errors raised inside DataLoader worker processes reach the main process re-raised by torch
with the worker's traceback in the message (``Caught ImageDecodeError in DataLoader worker
process 0. Original Traceback ...``; as a ``RuntimeError`` when the type cannot be rebuilt
from one string); :func:`user_error_message` unwraps them to the original message.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable

__all__ = ["debug_requested", "run_command", "user_error_message"]

#: Exception type names that are user errors wherever they are raised (also inside a
#: DataLoader worker, where only the name survives).
USER_ERROR_NAMES = frozenset(
    {
        "ConfigError",
        "CheckpointError",
        "DataError",
        "ImageDecodeError",
        "NonFiniteLossError",
        "DiskFullError",
        "FileNotFoundError",
        "FileExistsError",
        "IsADirectoryError",
        "NotADirectoryError",
        "PermissionError",
        "OutOfMemoryError",
    }
)
_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")
_ALLOC = re.compile(r"can't allocate memory|CUDA out of memory|DefaultCPUAllocator")
_MEMORY_HINT = (
    "; lower data.batch_size (pretrain), the protocol's batch_size or image_size (eval), or "
    "use train.precision=bf16 / backbone.grad_checkpointing=true"
)


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` or ``DENSESSL_DEBUG`` set to anything but ``""``, ``0``, ``false``, ``no``."""
    value = os.environ.get("DENSESSL_DEBUG", "").strip().lower()
    return flag or value not in ("", "0", "false", "no", "off")


def _unwrap_worker(text: str) -> tuple[str, str] | None:
    """``(type name, original message)`` of a DataLoader worker's re-raised error."""
    match = _WORKER.match(text)
    if match is None:
        return None
    name = match.group(1)
    lines = text.splitlines()
    pattern = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}(?::\s?(.*))?$")
    for i in range(len(lines) - 1, 0, -1):  # the last exception line is the one raised
        found = pattern.match(lines[i])
        if found is not None:
            message = "\n".join([found.group(1) or "", *lines[i + 1 :]]).strip()
            return name, message or name
    return name, lines[-1].strip()


def _os_message(err: OSError) -> str:
    """``strerror: filename`` without the ``[Errno N]`` prefix; densessl's own messages (a
    plain message, or a class with its own ``__str__`` such as DiskFullError) as they are."""
    if err.errno is None or not err.strerror or type(err).__str__ is not OSError.__str__:
        return str(err)
    where = [str(f) for f in (err.filename, err.filename2) if f is not None]
    text = err.strerror[:1].lower() + err.strerror[1:]
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some space or write elsewhere)"
    return f"{text}: {' -> '.join(where)}" if where else text


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``err`` is not one (a bug)."""
    from densessl.errors import ConfigError

    name = type(err).__name__
    text = str(err)
    if isinstance(err, ConfigError):
        return text
    unwrapped = _unwrap_worker(text)
    if unwrapped is not None:
        name, text = unwrapped
        return text if name in USER_ERROR_NAMES else None
    if name == "OutOfMemoryError" or isinstance(err, MemoryError) or _ALLOC.search(text):
        asked = re.search(r"tried to allocate ([\d.]+ ?\w+)", text, re.IGNORECASE)
        if asked and asked.group(1).endswith("bytes"):
            size = float(asked.group(1).split()[0]) / 2**30
            return f"out of memory: tried to allocate {size:.1f} GiB{_MEMORY_HINT}"
        detail = f"tried to allocate {asked.group(1)}" if asked else type(err).__name__
        return f"out of memory: {detail}{_MEMORY_HINT}"
    if isinstance(err, OSError) and (name in USER_ERROR_NAMES or err.errno is not None):
        return _os_message(err)
    if name in USER_ERROR_NAMES:
        return text
    return None


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``func(args)`` and turn how it ends into the exit status (module docstring)."""
    from densessl.train.signals import TrainingInterrupted

    try:
        return int(func(args))
    except TrainingInterrupted as err:
        if err.is_main:
            print(f"densessl: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("densessl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        out = getattr(args, "out", None)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and not err.filename and out:
            message += f" (while writing under --out {out})"  # e.g. a metrics line
        if debug_requested(getattr(args, "debug", False)):
            traceback.print_exc()
        print(f"densessl: error: {message}", file=sys.stderr, flush=True)
        return 2
