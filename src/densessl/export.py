"""Export a trained backbone for use elsewhere: timm-format weights (``densessl export``).

:func:`export_backbone` writes into one folder:

``model.safetensors``
    the backbone's timm ``VisionTransformer`` state dict (the EMA teacher of a run), keys
    exactly as timm names them, so plain timm loads it without densessl installed::

        meta = json.load(open("EXPORT/meta.json"))
        model = timm.create_model(
            meta["architecture"], pretrained=True,
            pretrained_cfg_overlay=dict(file="EXPORT/model.safetensors"),
            **meta["timm_kwargs"],
        )
        patches = model.forward_features(x)[:, model.num_prefix_tokens:]

``meta.json``
    ``architecture`` and ``timm_kwargs`` (what ``timm.create_model`` needs: patch_size,
    img_size, embed_dim, depth, num_heads, class_token, ...), the densessl ``backbone``
    config (read back by ``densessl eval --backbone EXPORT``), the input normalisation
    (ImageNet mean/std), where the weights came from (``method``, ``step``, ``source``) and
    the versions of densessl, timm and torch that wrote it. Removed first and written last:
    a folder with a ``meta.json`` is a complete, checked export.
``config.json``
    timm's own local-folder config, so ``timm.create_model("local-dir:EXPORT",
    pretrained=True)`` works as well (timm versions that know ``local-dir:``).

Position embeddings: densessl's ``pos_interp="timm"`` (the training presets) resamples them
exactly as timm does, so features match at every input size. Backbones imported from DINO
checkpoints use ``pos_interp="dino"``; plain timm matches them at ``img_size`` and is close
(not bit-equal) at other sizes.

Every file is written to a temporary name and renamed, so an interrupted export never leaves
a half-written file under the final name. :func:`load_export` reads an export back as a
:class:`~densessl.models.vit.ViTBackbone`.

The export folder must be new, empty or an earlier densessl export (its ``meta.json`` says
so, or, for one stopped before ``meta.json`` was written, the densessl mark in the metadata
of ``model.safetensors``): only these three files are ever replaced, and a folder that is not
an export is refused if it holds anything, so an export never overwrites a user's file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densessl.config.schema import to_plain
from densessl.errors import ConfigError
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from densessl.io.checkpoint import CheckpointError
from densessl.io.paths import user_path
from densessl.io.writes import disk_full_named
from densessl.models.vit import ViTBackbone

__all__ = ["WEIGHTS_NAME", "export_backbone", "export_detection", "load_export", "timm_from_export"]

WEIGHTS_NAME = "model.safetensors"
EXPORT_FORMAT = "densessl-export"
EXPORT_FORMAT_VERSION = 1
#: Largest |difference| of patch features between densessl and plain timm accepted by
#: the check at export time (float32 round-off is ~1e-6).
TOLERANCE = 1e-4
#: Names ``_write_atomic``'s temp files get (``tempfile.mkstemp``: 8 random characters).
_TEMP = re.compile(r"\.(model\.safetensors|meta\.json|config\.json)\.[a-z0-9_]{8}\.tmp")


def _is_densessl_export(folder: Path) -> bool:
    """A finished export (``meta.json``) or one stopped before it (marked weights)."""
    try:
        if json.loads((folder / "meta.json").read_text()).get("format") == EXPORT_FORMAT:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    try:
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS_NAME), "pt") as handle:
            return (handle.metadata() or {}).get("densessl") == EXPORT_FORMAT
    except Exception:  # missing, not safetensors: safetensors raises its own error types
        return False


def _check_out(out: Path) -> None:
    """Refuse an export folder holding files densessl did not write (before any work)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export --out {out} is a file; give a folder for the export")
    if not out.is_dir():
        return
    try:
        entries = sorted(p.name for p in out.iterdir() if not _TEMP.fullmatch(p.name))
    except OSError as err:
        raise ConfigError(f"export --out {out}: cannot list it: {err}") from err
    if entries and not _is_densessl_export(out):
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if entries[5:] else "")
        raise ConfigError(
            f"export --out {out} holds files that are not a densessl export ({shown}); "
            "densessl never overwrites files it did not write. Give a new or empty folder "
            "(an earlier densessl export in it is replaced)"
        )


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with disk_full_named(path):  # a full disk names the export folder
            write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def _timm_config(backbone: ViTBackbone, spec: dict[str, Any]) -> dict[str, Any]:
    """timm's ``config.json`` for ``create_model("local-dir:FOLDER")``."""
    size = backbone.config.img_size
    return {
        "architecture": spec["architecture"],
        "num_classes": 0,
        "num_features": backbone.embed_dim,
        "model_args": spec["kwargs"],
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": 0,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def timm_from_export(
    folder: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Build the exported model with plain timm, exactly as the README shows (no network).

    Args:
        folder: the export folder.
        meta: its metadata (default: read ``folder/meta.json``).

    Returns:
        The timm ``VisionTransformer`` in eval mode, on the CPU.
    """
    import timm

    folder = Path(folder)
    if meta is None:
        meta = json.loads((folder / "meta.json").read_text())
    model = timm.create_model(
        meta["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(folder / meta.get("weights", WEIGHTS_NAME))},
        **meta["timm_kwargs"],
    )
    return model.eval()


@torch.no_grad()
def _max_difference(backbone: ViTBackbone, timm_model: torch.nn.Module) -> float:
    """Largest |difference| of patch features on a seeded random image at ``img_size``
    (computed on the backbone's device; the backbone itself is not moved)."""
    size = backbone.config.img_size
    device = backbone.model.patch_embed.proj.weight.device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen).to(device)
    ours = backbone.tokens(x)[1].float()
    out = timm_model.to(device).forward_features(x)[:, backbone.num_prefix_tokens :]
    return float((ours.reshape(out.shape) - out.float()).abs().max())


def _resolve(source: str | os.PathLike[str] | ViTBackbone, which: str) -> tuple[ViTBackbone, dict]:
    if isinstance(source, ViTBackbone):
        return source, {"kind": "backbone"}
    from densessl.evaluation.features import build_extractor

    text = str(source)
    if text.startswith(("timm:", "random")):
        raise CheckpointError(
            f"cannot export {text!r}: export a densessl run directory or checkpoint, or an "
            "official DINO, DINOv2 or DINOv3 file"
        )
    path = user_path(text)
    if not path.exists():
        raise CheckpointError(
            f"nothing to export at {path}: expected a densessl run directory (config.yaml + "
            "checkpoints/last.pt), a densessl checkpoint or an official DINO checkpoint"
        )
    extractor = build_extractor(path, which=which)
    if not isinstance(extractor.model, ViTBackbone):  # pragma: no cover - timm: refused above
        raise CheckpointError(f"{path} is not a densessl backbone")
    return extractor.model, dict(extractor.source)


def export_backbone(
    source: str | os.PathLike[str] | ViTBackbone,
    out: str | os.PathLike[str],
    *,
    which: str = "teacher",
    verify: bool = True,
) -> Path:
    """Export a backbone as timm-format ``model.safetensors`` + ``meta.json`` (+ ``config.json``).

    Args:
        source: a run directory (its EMA teacher, ``checkpoints/last.pt``), a densessl
            checkpoint file, an official DINO checkpoint, or a built ``ViTBackbone``.
        out: the export folder: new, empty or an earlier densessl export (whose three files
            are replaced; other files are left alone).
        which: ``"teacher"`` (what the methods evaluate) or ``"student"``.
        verify: rebuild the model with plain timm from the written files and check that its
            patch features equal the densessl backbone's (max |diff| is stored in meta.json).

    Returns:
        The export folder.

    Raises:
        CheckpointError: nothing loadable at ``source``, or (``verify``) plain timm does not
            reproduce the features.
        ConfigError: ``out`` is a file, or a folder holding files that are not a densessl
            export (nothing is written then).
    """
    from safetensors.torch import save_file

    from densessl import __version__

    out = user_path(out)
    _check_out(out)
    backbone, origin = _resolve(source, which)
    spec = backbone.timm_spec()
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # an old meta.json must not bless new weights
    weights: dict[str, Tensor] = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in backbone.model.state_dict().items()
    }
    mark = {"format": "pt", "densessl": EXPORT_FORMAT}  # recognised by the next export here
    _write_atomic(out / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, mark))
    _write_json(out / "config.json", _timm_config(backbone, spec))
    config = backbone.config
    import timm

    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "weights": WEIGHTS_NAME,
        "architecture": spec["architecture"],
        "timm_kwargs": spec["kwargs"],
        "patch_size": config.patch_size,
        "img_size": config.img_size,
        "embed_dim": config.resolved_embed_dim,
        "depth": config.resolved_depth,
        "num_heads": config.resolved_num_heads,
        "class_token": config.cls_token,
        "final_norm": config.final_norm,
        "pos_interp": config.pos_interp,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "backbone": to_plain(config),
        "method": origin.get("method"),
        "step": origin.get("step"),
        "which": origin.get("which", which),
        "source": {k: v for k, v in origin.items() if k in ("kind", "path", "checkpoint")},
        "densessl_version": __version__,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
    }
    if verify:
        was_training = backbone.training
        try:
            diff = _max_difference(backbone.eval(), timm_from_export(out, meta))
        finally:
            backbone.train(was_training)
        if not diff <= TOLERANCE:
            raise CheckpointError(
                f"export check failed: plain timm {timm.__version__} gives patch features "
                f"differing by {diff:.2e} (> {TOLERANCE:g}) from the densessl backbone"
            )
        meta["verified_max_abs_diff"] = diff
    _write_json(out / "meta.json", meta)
    return out


def load_export(path: str | os.PathLike[str]) -> ViTBackbone:
    """An export (folder, or its ``.safetensors`` file) as a :class:`ViTBackbone` on the CPU,
    in eval mode (the loader of ``densessl eval``,
    :func:`densessl.evaluation.features.from_export`).

    Raises:
        CheckpointError: missing files, unreadable metadata, or weights that do not fit.
    """
    from densessl.evaluation.features import from_export

    model = from_export(path).model
    assert isinstance(model, ViTBackbone)
    return model


def _detection_recipe(to: str, backbone: ViTBackbone, path: Path) -> dict[str, Any]:
    c = backbone.config
    arch = {"patch_size": c.patch_size, "embed_dim": c.resolved_embed_dim,
            "depth": c.resolved_depth, "num_heads": c.resolved_num_heads}  # fmt: skip
    if to == "detectron2":
        net = {**arch, "pretrain_img_size": c.img_size, "pretrain_use_cls_token": True}
        lines = [f"model.backbone.net.{k}={v}" for k, v in net.items()]
        return {"overrides": [*lines, f"train.init_checkpoint={path}"], "backbone": net}
    net = {**arch, "img_size": c.img_size}
    lines = [f"model.backbone.{k}={v}" for k, v in net.items()]
    return {"overrides": [*lines, f"load_from={path}"], "backbone": net}


def export_detection(
    source: str | os.PathLike[str] | ViTBackbone, out: str | os.PathLike[str], to: str,
    *, which: str = "teacher",
) -> Path:  # fmt: skip
    """Write the backbone for a detection codebase: ``OUT/{to}.pth`` + ``OUT/detection.json``.

    ``to`` is ``"detectron2"`` (ViTDet's ``backbone.net.*``, ``{"model": ...}``) or ``"mmdet"``
    (the SelfPatch / FLSL ``backbone.*``, ``{"state_dict": ..., "meta": ...}``); the key
    layouts are in :mod:`densessl.models.detection_layout`. ``detection.json`` holds the
    config overrides that make the target's ViT match this backbone and load the file.

    Raises:
        ConfigError: unknown ``to``, a backbone the target's ViT cannot hold, or an ``out``
            holding files densessl did not write.
        CheckpointError: nothing loadable at ``source``.
    """
    from densessl.models.detection_layout import DETECTION_TARGETS, detection_state_dict

    if to not in DETECTION_TARGETS:
        raise ConfigError(f"--to {to!r}: choose timm, {', '.join(DETECTION_TARGETS)}")
    out = user_path(out)
    names = {f"{t}.pth" for t in DETECTION_TARGETS} | {"detection.json"}
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the export")
    listed = list(out.iterdir()) if out.is_dir() else []
    foreign = sorted(p.name for p in listed if p.name not in names and p.suffix != ".tmp")
    if foreign:
        raise ConfigError(
            f"--out {out} holds files densessl did not write ({', '.join(foreign[:3])}); "
            "give a new or empty folder, or an earlier `densessl export --to` folder"
        )
    backbone, origin = _resolve(source, which)
    try:
        state = detection_state_dict(backbone, to)
    except ValueError as err:
        raise ConfigError(f"cannot export for {to}: {err}") from err
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{to}.pth"
    meta = {"format": "densessl-detection-export", "target": to, "step": origin.get("step"),
            "method": origin.get("method"), "keys": len(state)}  # fmt: skip
    payload = {"model": state} if to == "detectron2" else {"state_dict": state, "meta": meta}
    _write_atomic(path, lambda tmp: torch.save(payload, tmp))
    _write_json(out / "detection.json", {**meta, **_detection_recipe(to, backbone, path)})
    return out
