"""The architecture of a densessl run: its checkpoint's own config, checked against
``config.yaml``.

A training checkpoint embeds the full configuration it was trained with, so the weights and
their architecture can never disagree there. ``RUN/config.yaml`` is a copy for people to
read; every reader (evaluation, export, viz, warm start, ``random:RUN_DIR``) takes the
architecture from the checkpoint and refuses a ``config.yaml`` that says otherwise, naming
both files and the differing keys, instead of building a different backbone from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from densessl.config.coerce import build_dataclass
from densessl.config.strict_yaml import read_yaml_file
from densessl.errors import ConfigError
from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import BackboneConfig

__all__ = ["checkpoint_backbone_config", "run_backbone_config", "yaml_backbone_config"]


def checkpoint_backbone_config(state: dict[str, Any], source: Path | str) -> BackboneConfig | None:
    """The backbone config embedded in a densessl checkpoint (``None`` when it has none);
    keys of other densessl versions are dropped, missing ones take their defaults."""
    config = state.get("config")
    saved = config.get("backbone") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        return None
    names = {f.name for f in dataclasses.fields(BackboneConfig)}
    try:
        return BackboneConfig(**{k: v for k, v in saved.items() if k in names})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its saved backbone config is invalid: {err}") from err


def yaml_backbone_config(path: Path) -> BackboneConfig:
    """The ``backbone`` section of a run's ``config.yaml``."""
    try:  # strict: no aliases (an alias bomb never expands), no duplicate keys
        tree = read_yaml_file(path) or {}
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    section = tree.get("backbone") if isinstance(tree, dict) else None
    if not isinstance(section, dict):
        raise CheckpointError(f"{path} has no 'backbone' section describing the architecture")
    try:
        return build_dataclass(BackboneConfig, section, "backbone")
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err


def run_backbone_config(
    run_dir: Path, state: dict[str, Any], checkpoint: Path | str
) -> BackboneConfig:
    """The architecture of ``checkpoint`` (a loaded densessl checkpoint of ``run_dir``).

    Raises:
        CheckpointError: ``run_dir/config.yaml`` exists and disagrees with the checkpoint
            (both files and the differing keys are named), or neither describes a backbone.
    """
    yaml_path = Path(run_dir) / "config.yaml"
    written = yaml_backbone_config(yaml_path) if yaml_path.is_file() else None
    saved = checkpoint_backbone_config(state, checkpoint)
    if saved is None:
        if written is None:
            raise CheckpointError(
                f"{checkpoint} holds no backbone config and {run_dir} has no config.yaml"
            )
        return written
    if written is not None:
        old, new = dataclasses.asdict(saved), dataclasses.asdict(written)
        differing = [
            f"backbone.{k}: {new[k]!r} in config.yaml, {old[k]!r} in the checkpoint"
            for k in old
            if old[k] != new[k]
        ]
        if differing:
            raise CheckpointError(
                f"{yaml_path} disagrees with the checkpoint {checkpoint} on the architecture "
                f"({'; '.join(differing[:6])}). The checkpoint's own config is the one its "
                "weights were trained with: config.yaml was changed after it was saved (by "
                "hand, or by a resume that an older densessl refused). Restore config.yaml, "
                "or load the checkpoint file itself"
            )
    return saved
