"""Read a checkpoint file of any supported format, detect the format, convert it to timm keys.

* :func:`read_checkpoint`: Flax msgpack files (LOCA) are decoded without JAX; every other file
  goes through :func:`densessl.io.checkpoint.load_file` (``weights_only=True``), with the
  Lightning names of :func:`.leopart.lightning_globals` and sacred's read-only containers
  (:func:`.neco.sacred_globals`) allowed as inert stand-ins.
* :func:`detect_format`: the format a loaded object looks like (``densessl``, ``dinov3``,
  ``neco``, ``dinov2``, ``loca``, ``leopart``, ``selfpatch``, ``flsl``, else ``dino``:
  official DINO and timm-layout state dicts of any family). A named format is accepted when
  its module's ``accepts(obj)`` (default: ``looks_like``) says so.
* :func:`convert`: the backbone in timm keys plus the config fields the format fixes; the
  format is the ``fmt`` argument, else ``--format`` (:mod:`.choice`), else detected.

Every failure is a :class:`~densessl.io.checkpoint.CheckpointError` naming the file, the
format it looks like and what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from densessl.io.checkpoint import FORMAT, CheckpointError, load_file
from densessl.models.dino_compat import describe, dino_state_dict_to_timm
from densessl.models.formats import dinov2, dinov3, flsl, leopart, loca_flax, neco, selfpatch
from densessl.models.formats.choice import FORMAT_NAMES, check_format, requested_format
from densessl.models.formats.common import Converted

__all__ = ["FORMAT_NAMES", "convert", "detect_format", "read_checkpoint", "resolve_format"]

#: Converters by name, in detection order (DINO and densessl have their own paths). NeCo
#: comes before DINOv2 and Leopart: its networks have their keys plus NeCo's head.
CONVERTERS = {
    "dinov3": dinov3,
    "neco": neco,
    "dinov2": dinov2,
    "loca": loca_flax,
    "leopart": leopart,
    "selfpatch": selfpatch,
    "flsl": flsl,
}
#: What each name means, for messages.
DESCRIPTIONS = {
    "dino": "official DINO checkpoint (facebookresearch/dino) or timm-layout state dict",
    "dinov2": "official DINOv2 checkpoint (facebookresearch/dinov2)",
    "dinov3": "official DINOv3 checkpoint (facebookresearch/dinov3)",
    "densessl": "densessl training checkpoint",
    "selfpatch": "SelfPatch checkpoint (alinlab/SelfPatch)",
    "leopart": "Leopart Lightning checkpoint (MkuuWaUjinga/leopart)",
    "loca": "LOCA Flax checkpoint (google-research/scenic projects/loca)",
    "flsl": "FLSL checkpoint (QingSuML/FLSL)",
    "neco": "NeCo checkpoint (vpariza/NeCo)",
}


def resolve_format(fmt: str | None = None) -> str | None:
    """``fmt``, else the ``--format`` in effect, else ``None`` (detect)."""
    try:
        return check_format(fmt if fmt is not None else requested_format())
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def read_checkpoint(path: str | Path, fmt: str | None = None) -> Any:
    """Load ``path`` safely: a Flax msgpack tree (LOCA) or a ``weights_only`` torch object.

    Raises:
        CheckpointError: unreadable file (the message names it and the format tried).
    """
    path = Path(path)
    fmt = resolve_format(fmt)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if fmt == "loca" or (fmt is None and loca_flax.is_flax_file(path)):
        try:
            return loca_flax.read_flax(path)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
            raise CheckpointError(
                f"{path} is not a readable {DESCRIPTIONS['loca']} (a Flax msgpack file): {err}"
            ) from err
    with leopart.lightning_globals(), neco.sacred_globals():
        return load_file(path)


def detect_format(obj: Any) -> str:
    """The format ``obj`` (a loaded file) looks like; ``dino`` when nothing else fits."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "densessl"
    for name, module in CONVERTERS.items():
        if module.looks_like(obj):
            return name
    return "dino"


def convert(
    obj: Any, source: str | Path, *, which: str = "teacher", fmt: str | None = None
) -> Converted:
    """The backbone of a loaded released checkpoint in timm keys (not a densessl checkpoint:
    :func:`densessl.io.checkpoint.training_backbone_weights` reads those).

    Args:
        obj: what :func:`read_checkpoint` returned.
        source: the file, for messages.
        which: ``"teacher"`` (default) or ``"student"`` network.
        fmt: the format; ``None``: ``--format`` or detected.

    Raises:
        CheckpointError: the file is not (or only partly) the format; names what is missing.
    """
    looks = detect_format(obj)
    fmt = resolve_format(fmt) or looks
    if fmt == "densessl":
        raise CheckpointError(
            f"{source}: --format densessl, but this is not a densessl training checkpoint "
            f"(it looks like a {DESCRIPTIONS[looks]}; found {describe(obj)})"
        )
    module = CONVERTERS.get(fmt)
    accepts = getattr(module, "accepts", getattr(module, "looks_like", None))
    if fmt != looks and accepts is not None and not accepts(obj):
        raise CheckpointError(
            f"{source}: --format {fmt}, but this does not look like a {DESCRIPTIONS[fmt]}; "
            f"it looks like a {DESCRIPTIONS[looks]} (found {describe(obj)}). Leave --format "
            "out to detect it"
        )
    try:
        if fmt == "dino":
            return Converted("dino", dino_state_dict_to_timm(obj, which=which))
        return CONVERTERS[fmt].to_timm(obj, which=which)
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{source}: {err}") from err
