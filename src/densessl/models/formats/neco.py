"""NeCo releases (vpariza/NeCo @3932160): its ViT networks, DINO-style or DINOv2-style.

NeCo post-trains a pretrained ViT (``src/neco.py``: the ``NeCo`` LightningModule holds the
student as ``self.model`` and the EMA teacher as ``self.teacher``). Two architectures:

* ``arch_version: v1`` (``src/models/vit.py``, DINO's ViT): timm's key names plus NeCo's
  ``projection_head.*`` (an MLP, ``n_layers_projection_head`` Linear layers); ``pos_embed``
  ``[1, 1 + 14*14, D]`` (224 px). Released as ``neco_on_dino_vit16_{model,teacher}.ckpt``
  (also TimeT/Leopart starts, ViT-S/16).
* ``arch_version: v2`` (``src/models/vit_v2.py``, DINOv2's ``DinoVisionTransformer``):
  DINOv2's key names (``register_tokens`` when ``num_register_tokens > 0``, ``mask_token``,
  ``blocks.N.ls1.gamma``...) plus ``projection_head.*``; ``pos_embed`` ``[1, 1 + 37*37, D]``
  (518 px). Released as ``neco_on_dinov2{,r,r_xr}_vit14_{model,teacher}.ckpt`` (ViT-S/14 and
  B/14). *DINOv2R-XR* is DINOv2-R's weights post-trained with ``num_register_tokens: 0``
  (``neco_dinov2r_xr.yml``), so its file has no ``register_tokens`` and it is built as a
  plain DINOv2 (0 registers); DINOv2R files carry their 4.

Containers:

* the released files: one network's bare state dict (the README loads them with
  ``load_state_dict(strict=False)`` into timm's ``vit_small_patch16_224`` or the DINOv2 hub
  model; the evaluation configs call them "the teacher/model weights", ``method: custom``);
  the student and the teacher are separate files, so ``which`` does not apply;
* the Lightning checkpoints ``train_with_neco.py`` writes (``ModelCheckpoint``):
  ``{"state_dict": {"model.*", "teacher.*"}, "hyper_parameters": {...}, ...}``; the teacher
  by default, ``which="student"`` takes ``model.`` (what NeCo's ``method: ours`` evaluates).

``projection_head.*`` is dropped (kept in :attr:`Converted.extras`); v2 networks convert
through :func:`.dinov2.dinov2_to_timm` (registers moved to timm's layout, ``mask_token``
dropped). Both versions resample positions as DINO (offset 0.1, bicubic, no antialias).

Lightning 2.5 (NeCo's ``environment.yml``) saves ``callbacks`` under string keys and the
hyper-parameters as a plain dict, whose lists are sacred's (:data:`SACRED_NAMES`).

Detection: a network with ``projection_head.*`` and no ``prototypes`` (Leopart's ViT always
has them), or a Lightning file with NeCo's hyper-parameters (``sort_net``,
``student_steepness``...). A bare file without the head is an official DINO / DINOv2 layout
and is detected as such (the weights are the same); ``--format neco`` reads it as NeCo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
from densessl.models.formats.dinov2 import dinov2_to_timm

__all__ = ["NAME", "SACRED_NAMES", "accepts", "looks_like", "sacred_globals", "to_timm"]

NAME = "neco"
NETWORK_PREFIX = LIGHTNING_PREFIX
HEAD_PREFIX = "projection_head."
#: Arguments of ``NeCo.__init__`` saved by ``save_hyperparameters()`` that Leopart lacks.
NECO_HPARAMS = ("sort_net", "student_steepness", "teacher_steepness", "arch_version")
MARKER = "patch_embed.proj.weight"
#: ``train_with_neco.py`` runs under sacred, whose captured config is read-only: the list
#: arguments of ``NeCo(...)`` (``crops_for_assign``, ``nmb_crops``, ``num_clusters_kmeans``)
#: are sacred ``ReadOnlyList`` s, pickled into ``hyper_parameters`` as the class applied to a
#: plain copy (``ReadOnlyContainer.__reduce__``, sacred 0.8.7). Allowed for ``weights_only``
#: loads bound to that plain ``list`` / ``dict``; sacred is never imported.
SACRED_NAMES: dict[str, type] = {
    "sacred.config.custom_containers.ReadOnlyList": list,
    "sacred.config.custom_containers.ReadOnlyDict": dict,
}


@contextlib.contextmanager
def sacred_globals() -> Iterator[None]:
    """Allow :data:`SACRED_NAMES` (as ``list`` / ``dict``) for ``weights_only`` loads."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is None:  # pragma: no cover - torch < 2.5: no scoped form, no tuple names
        yield
        return
    with scoped([(cls, name) for name, cls in SACRED_NAMES.items()]):
        yield


def _prefixed(state: Mapping[Any, Any]) -> bool:
    return any(f"{p}{MARKER}" in state for p in NETWORK_PREFIX.values())


def _neco_network(net: Mapping[str, Any]) -> bool:
    keys = [str(k) for k in net]
    has_head = any(k.startswith(HEAD_PREFIX) for k in keys)
    return MARKER in net and has_head and not any(k.startswith("prototypes.") for k in keys)


def looks_like(obj: Any) -> bool:
    """A NeCo network (``projection_head.*``, no ``prototypes``), bare or under
    ``model.``/``teacher.``, or a Lightning file with NeCo's hyper-parameters."""
    state = lightning_state(obj)
    if _prefixed(state):
        hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
        if isinstance(hparams, Mapping) and any(k in hparams for k in NECO_HPARAMS):
            return True
        return any(_neco_network(prefixed_tensors(state, p)) for p in NETWORK_PREFIX.values())
    return _neco_network(state)


def accepts(obj: Any) -> bool:
    """What ``--format neco`` reads: :func:`looks_like`, or a bare ViT state dict without
    the head (DINO or DINOv2 key names)."""
    state = lightning_state(obj)
    return looks_like(obj) or (MARKER in state and "cls_token" in state)


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """The network's backbone in timm keys (Lightning: ``which``'s; bare: the file's).

    Raises:
        ValueError: ``which`` is invalid, the network is missing or incomplete.
    """
    if which not in NETWORK_PREFIX:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    state = lightning_state(obj)
    prefix = NETWORK_PREFIX[which] if _prefixed(state) else ""
    net = prefixed_tensors(state, prefix)
    where = f"{which} network '{prefix}'" if prefix else "one network"
    if not net:
        other = "student" if which == "teacher" else "teacher"
        raise ValueError(
            f"looks like a NeCo Lightning checkpoint but holds no {which} network (no "
            f"'{prefix}*' keys in its state_dict; trained with use_teacher: False?). Use "
            f"--which {other}; found {describe(state)}"
        )
    extras = {f"{prefix}{k}": v for k, v in net.items() if k.startswith(HEAD_PREFIX)}
    body = {k: v for k, v in net.items() if not k.startswith(HEAD_PREFIX)}
    v2 = "mask_token" in body or "blocks.0.ls1.gamma" in body  # DinoVisionTransformer
    what = f"NeCo checkpoint (vpariza/NeCo, {where}, {'DINOv2' if v2 else 'DINO'} ViT)"
    require_keys(body, what, state)
    if v2:
        weights = dinov2_to_timm(body)
        registers = int(weights["reg_token"].shape[1]) if "reg_token" in weights else 0
        fields = {"family": "dinov2", "num_registers": registers, "pos_interp": "dino"}
    else:  # v1: DINO's ViT, timm's names
        weights = {k: torch.as_tensor(v) for k, v in body.items()}
        fields = {"pos_interp": "dino"}
    if "cls_token" not in weights:
        raise ValueError(
            f"looks like a {what} but the backbone is incomplete: missing ['cls_token'] "
            f"(NeCo's ViTs all have one); found {describe(state)}"
        )
    return Converted(NAME, weights, fields, extras)
