"""Device names from the user (``train.device``, ``--device``), checked before any work.

``torch.device("cuda:7")`` is accepted on any machine; the failure only comes at the first
allocation, deep inside a model or a DataLoader, as a ``RuntimeError`` about drivers.
:func:`parse_device` refuses such names at once with a :class:`~densessl.errors.ConfigError`
naming the key and what this machine has.
"""

from __future__ import annotations

import torch

from densessl.errors import ConfigError

__all__ = ["available_devices", "parse_device"]


def _typed(key: str, name: object) -> str:
    """How the user typed it: ``--device cuda:7`` or ``train.device='cuda:7'``."""
    text = str(name)[:80]
    return f"{key} {text}" if key.startswith("--") else f"{key}={text!r}"


def available_devices() -> str:
    """What this machine offers, in words (for error messages)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names.append("cuda" if count == 1 else f"cuda, cuda:0..cuda:{count - 1}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return ", ".join(names)


def parse_device(name: str | torch.device, key: str) -> torch.device:
    """``name`` as a ``torch.device`` that exists on this machine.

    Args:
        name: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        key: what the user typed it as (``train.device``, ``--device``), for the message.

    Raises:
        ConfigError: not a device name, or a device this machine does not have.
    """
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(str(name).strip())
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(
                f"{_typed(key, name)} is not a device name; use one of {available_devices()}"
            ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{_typed(key, name)}: no CUDA device is available on this machine "
                f"(available: {available_devices()})"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{_typed(key, name)}: this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{_typed(key, name)}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise ConfigError(
            f"{_typed(key, name)}: densessl runs on {available_devices()}, not {device.type!r}"
        )
    return device
