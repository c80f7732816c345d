"""Backbone weights that ship inside the package: ``--backbone densessl:NAME``, ``--init
densessl:NAME``.

Each entry is a densessl export (``model.safetensors`` + ``meta.json`` + ``config.json``, see
:mod:`densessl.export`) under ``models/shipped/<folder>/``, with the sha256 of its weights
recorded here: :func:`shipped_weights` refuses a file that does not match, so a corrupted or
hand-edited copy never passes for the recorded one. ``reproduce`` is the command that trains
the weights again from nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densessl.errors import ConfigError
from densessl.io.checkpoint import CheckpointError

PREFIX = "densessl:"


@dataclass(frozen=True)
class ShippedBackbone:
    """One shipped export: its folder, the sha256 of its ``model.safetensors`` and how it
    was made."""

    folder: str
    sha256: str
    description: str
    reproduce: str
    #: The scenes it was trained on, as ``SyntheticScenes`` options (``class_set``,
    #: ``colours``, ``objects``, ``radius``, ``size``): evaluate and post-train it on these.
    scenes: dict[str, Any] = field(default_factory=dict)


SHIPPED: dict[str, ShippedBackbone] = {
    "miniature-base": ShippedBackbone(
        folder="miniature_base",
        sha256="c9db8c72270cb2bd4a1d33ca6776bccfe963da5c46a65e35a59d0df99a547047",
        description=(
            "the post-training miniature's DINO base: the tiny ViT (128-d, 4 blocks, patch 8) "
            "trained with DINO for 12,000 steps of 16 gray distinct-cue scenes at 96 px"
        ),
        reproduce="python benchmarks/miniature_base.py --recipe base-gray --seed 0 --export",
        scenes={
            "class_set": "distinct-cues",
            "colours": "gray",
            "objects": (1, 3),
            "radius": (0.2, 0.4),
            "size": 96,
        },
    ),
}


def is_shipped(source: object) -> bool:
    """Whether ``source`` names a shipped backbone (``densessl:NAME``)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_folder(name: str) -> Path:
    """The folder of shipped backbone ``name`` (without ``densessl:``), checksum verified.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
        CheckpointError: the weights are missing or their sha256 is not the recorded one.
    """
    if name not in SHIPPED:
        known = ", ".join(PREFIX + key for key in SHIPPED)
        raise ConfigError(f"unknown shipped backbone {PREFIX}{name}; choose one of {known}")
    entry = SHIPPED[name]
    folder = Path(__file__).resolve().parent / "shipped" / entry.folder
    weights = folder / "model.safetensors"
    if not weights.is_file() or not (folder / "meta.json").is_file():
        raise CheckpointError(f"{PREFIX}{name}: {folder} lacks model.safetensors or meta.json")
    found = sha256_of(weights)
    if found != entry.sha256:
        raise CheckpointError(
            f"{PREFIX}{name}: {weights} has sha256 {found}, not the recorded {entry.sha256}; "
            f"reinstall densessl or rebuild it with `{entry.reproduce}`"
        )
    return folder


def resolve_shipped(source: str) -> Path:
    """The export folder that ``densessl:NAME`` stands for."""
    return shipped_folder(source[len(PREFIX) :])
