"""Leopart releases (MkuuWaUjinga/leopart @7835701): PyTorch-Lightning checkpoints.

``src/leopart.py``'s ``Leopart`` LightningModule holds the student as ``self.model`` and the
EMA teacher as ``self.teacher`` (``src/vit.py``: DINO's ViT with CLS token and final norm,
plus ``projection_head.*`` and ``prototypes.weight``), so the Lightning ``state_dict`` keys are
``model.<timm key>`` and ``teacher.<timm key>``. The released "full ckpt" files
(``leopart_vits16.ckpt``: ViT-S/16, ``leopart_vitb8.ckpt``: ViT-B/8, README) are read either
as a Lightning checkpoint (``{"state_dict": ..., "epoch", "callbacks", "hyper_parameters",
...}``) or as the bare state dict the README's snippet iterates.

The teacher is used by default (``which="teacher"``); ``which="student"`` takes ``model.``
(what Leopart's own ``experiments/utils.get_backbone_weights`` loads for its evaluations).

Lightning pickles a few of its own classes into a checkpoint (PL 1.4: callback classes as the
keys of ``callbacks``; ``AttributeDict`` hyper-parameters). :func:`lightning_globals` allows
*only those names* for a ``weights_only`` load, bound to inert stand-ins (callback classes:
:class:`LightningCallbackKey`; ``AttributeDict``: ``dict``), so no Lightning import happens
and nothing pickled runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from densessl.models.dino_compat import describe
from densessl.models.formats.common import (
    LIGHTNING_PREFIX,
    Converted,
    lightning_state,
    prefixed_tensors,
    require_keys,
)

__all__ = ["LIGHTNING_NAMES", "NAME", "lightning_globals", "looks_like", "to_timm"]

NAME = "leopart"
#: Leopart's heads inside each network.
HEAD_PREFIXES = ("projection_head.", "prototypes.", "head.")
NETWORK_PREFIX = LIGHTNING_PREFIX


class LightningCallbackKey:
    """Inert stand-in for a Lightning callback class used as a dict key in ``callbacks``."""


#: The Lightning globals a Leopart ``.ckpt`` may reference (PL 1.4.9 and later names).
LIGHTNING_NAMES: dict[str, type] = {
    f"{root}.callbacks.{module}.{cls}": LightningCallbackKey
    for root in ("pytorch_lightning", "lightning.pytorch")
    for module, cls in (
        ("model_checkpoint", "ModelCheckpoint"),
        ("lr_monitor", "LearningRateMonitor"),
        ("early_stopping", "EarlyStopping"),
        ("progress", "ProgressBar"),
    )
}
LIGHTNING_NAMES.update(
    {
        f"{root}.utilities.parsing.AttributeDict": dict  # read as the plain dict it is
        for root in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
    }
)


@contextlib.contextmanager
def lightning_globals() -> Iterator[None]:
    """Allow :data:`LIGHTNING_NAMES` (bound to the stand-ins) for ``weights_only`` loads."""
    allowed = [(cls, name) for name, cls in LIGHTNING_NAMES.items()]
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is None:  # pragma: no cover - torch < 2.5: no scoped form, no tuple names
        yield
        return
    with scoped(allowed):
        yield


def looks_like(obj: Any) -> bool:
    """A (Lightning) state dict with ``model.``- or ``teacher.``-prefixed ViT keys."""
    keys = {str(k) for k in lightning_state(obj)}
    return any(f"{p}patch_embed.proj.weight" in keys for p in NETWORK_PREFIX.values())


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """The teacher's (or ``which="student"``: ``model.``) backbone in timm keys.

    Raises:
        ValueError: ``which`` is invalid, the network is missing or incomplete.
    """
    if which not in NETWORK_PREFIX:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    state = lightning_state(obj)
    prefix = NETWORK_PREFIX[which]
    net = prefixed_tensors(state, prefix)
    if not net:
        other = "student" if which == "teacher" else "teacher"
        raise ValueError(
            f"looks like a Leopart checkpoint but holds no {which} network (no "
            f"'{prefix}*' keys in its state_dict; trained without a teacher?). Use "
            f"--which {other}; found {describe(state)}"
        )
    weights = {k: v for k, v in net.items() if not k.startswith(HEAD_PREFIXES)}
    extras = {f"{prefix}{k}": v for k, v in net.items() if k.startswith(HEAD_PREFIXES)}
    require_keys(weights, f"Leopart checkpoint ({which} network '{prefix}')", state)
    return Converted(NAME, weights, {"pos_interp": "dino"}, extras)
