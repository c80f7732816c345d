"""Frozen patch-feature extractors for evaluation, from any source of backbone weights.

Every evaluator takes an extractor ``images [B, 3, H, W] -> patches [B, h, w, D]``
(ImageNet-normalised images; see :mod:`densessl.evaluation`). :class:`PatchFeatureExtractor`
is that callable for a backbone: an ``nn.Module`` that stays in eval mode, holds no
gradients, runs on whatever device it is moved to (inputs follow it) and records where its
weights came from (:attr:`PatchFeatureExtractor.source`, written into every result).
Batching, resizing to the protocol's resolution and progress bars belong to the protocols.

:func:`build_extractor` picks the loader from a string (the CLI's ``--backbone``):
``RUN_DIR`` (:func:`from_run`: ``checkpoints/last.pt`` EMA teacher or student, built with
the architecture embedded in it; a disagreeing ``config.yaml`` is refused), ``FILE.pt|.pth``
(:func:`from_checkpoint`: densessl, DINO or a release, :mod:`densessl.models.formats`), a
folder or ``.safetensors`` with
``meta.json`` (:func:`from_export`), ``timm:NAME`` with a local weights file
(:func:`from_timm`; nothing is downloaded), ``random:ARCH`` or ``random:RUN_DIR``
(:func:`random_init`, seeded baselines), ``densessl:NAME`` (an export shipped with the package,
:mod:`densessl.models.shipped`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from densessl.errors import ConfigError
from densessl.evaluation.extractor import PatchFeatureExtractor, wrap_backbone
from densessl.io.checkpoint import FORMAT, CheckpointError, load_file
from densessl.io.paths import user_path
from densessl.models.arch_checks import export_config
from densessl.models.formats.detect import detect_format, read_checkpoint, resolve_format
from densessl.models.loading import backbone_from_state, load_timm_weights
from densessl.models.run_arch import run_backbone_config, yaml_backbone_config
from densessl.models.shipped import is_shipped, resolve_shipped
from densessl.models.vit import ARCHS, BackboneConfig, build_backbone

__all__ = [
    "PatchFeatureExtractor",
    "build_extractor",
    "from_checkpoint",
    "from_export",
    "from_run",
    "from_timm",
    "random_init",
]

SOURCES_HELP = (
    "a densessl run directory, a checkpoint file (densessl, DINO, DINOv2, DINOv3, SelfPatch, "
    "Leopart, LOCA, FLSL, or a timm-layout .pth/.safetensors), an exported backbone "
    "(folder or .safetensors with meta.json), timm:NAME (with "
    "weights=FILE), random:ARCH / random:RUN_DIR or densessl:miniature-base (shipped)"
)


def _training_state(path: Path) -> dict[str, Any]:
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a densessl training checkpoint")
    return state


def _run_architecture(run_dir: Path) -> BackboneConfig:
    """``random:RUN_DIR``: the architecture of the run's checkpoint (``config.yaml`` must
    agree), or of ``config.yaml`` while there is no checkpoint yet."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return run_backbone_config(run_dir, _training_state(last), last)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} is not a densessl run directory: no config.yaml or checkpoints/last.pt"
        )
    return yaml_backbone_config(path)


def from_run(
    run_dir: str | Path, which: str = "teacher", checkpoint: str | Path | None = None
) -> PatchFeatureExtractor:
    """The backbone of a densessl run directory.

    The architecture is the checkpoint's own (embedded) config; a ``config.yaml`` beside it
    that disagrees is refused (:func:`~densessl.models.run_arch.run_backbone_config`).

    Args:
        run_dir: folder holding ``checkpoints/last.pt`` (and ``config.yaml``).
        which: ``"teacher"`` (the EMA teacher, what the methods evaluate) or ``"student"``.
        checkpoint: another checkpoint of the run (e.g. ``checkpoints/step_0001000.pt``).

    Raises:
        CheckpointError: missing or unreadable files, weights that do not fit, or a
            ``config.yaml`` that disagrees with the checkpoint.
    """
    run_dir = user_path(run_dir)
    if (run_dir / "config.yaml").is_file():
        yaml_backbone_config(run_dir / "config.yaml")  # a broken one is reported first
    path = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no checkpoint {path.name} (looked for {path}); has the run "
            "written one yet (train.checkpoint_every)?"
        )
    state = _training_state(path)
    config = run_backbone_config(run_dir, state, path)
    backbone = backbone_from_state(state, path, config, which=which)
    source = {
        "kind": "run",
        "path": str(run_dir),
        "checkpoint": str(path),
        "which": which,
        "method": state.get("method"),
        "step": state.get("step"),
    }
    what = f"run {run_dir} ({which}, {state.get('method')}, step {state.get('step')})"
    return wrap_backbone(backbone, source, what)


def from_checkpoint(
    path: str | Path,
    arch: str | None = None,
    patch_size: int | None = None,
    which: str = "teacher",
    num_heads: int | None = None,
) -> PatchFeatureExtractor:
    """A densessl, official (DINO, DINOv2, DINOv3) or released (:mod:`densessl.models.formats`)
    checkpoint.

    Args:
        path: the file. A densessl checkpoint carries its architecture; for DINO files it is
            inferred from the weights (standard widths 192/384/768) unless ``arch`` is given.
        arch: ``vit_tiny`` / ``vit_small`` / ``vit_base``: build this architecture (with
            ``patch_size``, default 16, and DINO's position resampling) and load strictly.
        patch_size: patch side of ``arch``; alone, it is checked against the file.
        which: ``"teacher"`` or ``"student"`` network of a training checkpoint.
        num_heads: attention heads of an official file whose width is not standard.

    Raises:
        CheckpointError: unreadable file, no ViT weights, or weights that do not fit.
    """
    path = user_path(path)
    state = read_checkpoint(path)  # torch (weights_only) or Flax; --format honoured
    densessl_file = isinstance(state, dict) and state.get("format") == FORMAT
    config = None
    if arch is not None and not densessl_file:
        try:
            config = BackboneConfig(arch=arch, patch_size=patch_size or 16, pos_interp="dino")
        except ValueError as err:
            raise ConfigError(str(err)) from err
    backbone = backbone_from_state(state, path, config, which=which, num_heads=num_heads)
    if patch_size is not None and backbone.patch_size != patch_size:
        raise CheckpointError(
            f"{path} holds a backbone with patch size {backbone.patch_size}, not {patch_size}"
        )
    if densessl_file:
        source = {"kind": "checkpoint", "path": str(path), "which": which}
        source.update(method=state.get("method"), step=state.get("step"))
        what = f"checkpoint {path} ({which}, {state.get('method')}, step {state.get('step')})"
    else:
        kind = resolve_format() or detect_format(state)
        source = {"kind": kind, "path": str(path), "which": which}
        what = f"{kind} checkpoint {path} ({which})"
    return wrap_backbone(backbone, source, what)


def _export_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        if len(weights) != 1:
            raise CheckpointError(
                f"{path}: an exported backbone folder holds one *.safetensors file and "
                f"meta.json; found {[w.name for w in weights] or 'no safetensors'}"
            )
        return weights[0], path / "meta.json"
    return path, path.with_name("meta.json")


def from_export(path: str | Path) -> PatchFeatureExtractor:
    """An exported backbone: timm-layout safetensors weights and a ``meta.json`` beside them.

    ``meta.json`` may hold ``"backbone"`` (:class:`~densessl.models.vit.BackboneConfig`
    fields; used as is) and ``"pos_interp"``; without ``"backbone"`` the architecture is
    inferred from the weights (DINO widths 192/384/768). Before anything is built, the
    sizes it states must agree with each other and with the weight shapes
    (:func:`~densessl.models.arch_checks.export_config`).

    Raises:
        CheckpointError: missing or unreadable files, or weights that do not fit.
    """
    from safetensors.torch import load_file as load_safetensors

    weights_path, meta_path = _export_files(user_path(path))
    for needed in (weights_path, meta_path):
        if not needed.is_file():
            raise CheckpointError(
                f"exported backbone {path}: missing {needed} (expected model weights "
                "*.safetensors and meta.json side by side)"
            )
    try:
        meta = json.loads(meta_path.read_text())
        weights = load_safetensors(str(weights_path))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"exported backbone {path}: cannot read it: {err}") from err
    config = export_config(meta, weights, str(meta_path))  # checked before allocating
    backbone = build_backbone(config)
    load_timm_weights(backbone, weights, source=str(weights_path))
    source = {"kind": "export", "path": str(weights_path), "meta": meta}
    return wrap_backbone(backbone.eval(), source, f"export {weights_path}")


def from_timm(name: str, weights: str | Path, **kwargs: Any) -> PatchFeatureExtractor:
    """timm model ``name`` with weights from a local file (timm's own loading and filters).

    Args:
        name: a timm model name, e.g. ``vit_small_patch16_224``.
        weights: ``.safetensors`` / ``.pth`` / ``.bin`` state dict (weights only; a
            classifier head in it is dropped).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``).

    Raises:
        ConfigError: unknown model name.
        CheckpointError: missing file, or weights that do not load into the model.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:6]
        raise ConfigError(f"unknown timm model {name!r}; similar names: {close}")
    path = user_path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights file for timm model {name} not found: {path}")
    options = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True, **kwargs}
    model = timm.create_model(name, pretrained=False, **options)
    try:
        _load_timm_file(model, path)
    except Exception as err:  # torch/timm/safetensors raise many error types
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        what = "; ".join(lines[:3]) if lines else type(err).__name__
        raise CheckpointError(f"{path} does not load into timm model {name}: {what}") from err
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        patch_size = int(embed.patch_size[0])
    else:
        patch_size = int(model.feature_info[-1]["reduction"])
    source = {"kind": "timm", "model": name, "path": str(path), "patch_size": patch_size}
    source["description"] = f"timm {name} ({path})"
    return PatchFeatureExtractor(model.eval(), patch_size, source)


def _load_timm_file(model: nn.Module, path: Path) -> None:
    """timm's file reader (weights only, wrappers, safetensors) and the model's checkpoint
    filter (e.g. position-embedding resampling), then a *strict* load. timm's own
    ``pretrained=True`` path loads non-strictly whenever the classifier is dropped, which
    would leave missing weights at random init without a word."""
    from timm.models import load_state_dict

    state = load_state_dict(str(path))
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    for head in (classifiers,) if isinstance(classifiers, str) else classifiers:
        if getattr(model, "num_classes", 0) == 0:
            state.pop(f"{head}.weight", None)
            state.pop(f"{head}.bias", None)
    model.load_state_dict(state, strict=True)


def random_init(
    spec: BackboneConfig | str | Path, patch_size: int | None = None, seed: int = 0
) -> PatchFeatureExtractor:
    """A randomly initialised backbone (timm init, seeded): the baseline of every table.

    Args:
        spec: a :class:`BackboneConfig`, an arch name (``vit_tiny`` / ``vit_small`` /
            ``vit_base``, 12 blocks, ``patch_size`` default 16) or a run directory (or its
            ``config.yaml``) whose architecture is copied.
        patch_size: patch side for an arch name.
        seed: initialisation seed (the global RNG is left untouched).
    """
    if isinstance(spec, BackboneConfig):
        config, origin = spec, "config"
    elif str(spec) in ARCHS:
        config, origin = BackboneConfig(arch=str(spec), patch_size=patch_size or 16), str(spec)
    else:
        path = user_path(spec)
        run_dir = path.parent if path.name == "config.yaml" else path
        if not run_dir.is_dir():
            raise ConfigError(
                f"random init needs an arch ({', '.join(ARCHS)}) or a run directory; got {spec!r}"
            )
        config, origin = _run_architecture(run_dir), str(run_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(config).eval()
    source = {"kind": "random", "spec": origin, "seed": seed}
    return wrap_backbone(backbone, source, f"random init (seed {seed}) of {origin}")


def build_extractor(
    source: str | Path,
    *,
    arch: str | None = None,
    patch_size: int | None = None,
    which: str = "teacher",
    weights: str | Path | None = None,
    seed: int = 0,
    num_heads: int | None = None,
) -> PatchFeatureExtractor:
    """An extractor from a ``--backbone`` string (see the module docstring for the forms).

    Args:
        source: run directory, checkpoint file, export, ``timm:NAME`` or ``random:...``.
        arch / patch_size: architecture of a raw DINO checkpoint, or of ``random``.
        which: ``"teacher"`` or ``"student"`` (runs and training checkpoints).
        weights: the weights file of ``timm:NAME``.
        seed: seed of ``random:...``.
        num_heads: attention heads of an official checkpoint of a non-standard width.

    Raises:
        CheckpointError: missing or unusable files (the message names them).
        ConfigError: a malformed ``source`` or option.
    """
    text = str(source)
    if which not in ("teacher", "student"):
        raise ConfigError(f"which must be 'teacher' or 'student', got {which!r}")
    if text == "random" or text.startswith("random:"):
        spec = text.partition(":")[2] or arch or "vit_small"
        return random_init(spec, patch_size, seed)
    if text.startswith("timm:"):
        if weights is None:
            raise ConfigError(f"{text} needs a local weights file (weights=FILE / --weights FILE)")
        return from_timm(text.partition(":")[2], weights)
    if is_shipped(text):
        return from_export(resolve_shipped(text))
    path = user_path(text)
    if path.is_dir():
        if (path / "config.yaml").is_file() or (path / "checkpoints" / "last.pt").is_file():
            return from_run(path, which)
        if (path / "meta.json").is_file():
            return from_export(path)
        raise CheckpointError(
            f"{path} is neither a densessl run directory (config.yaml, checkpoints/last.pt) "
            "nor an exported backbone (*.safetensors + meta.json)"
        )
    if path.suffix == ".safetensors" and (path.with_name("meta.json")).is_file():
        return from_export(path)
    if not path.exists():
        raise CheckpointError(f"backbone {text!r} not found; expected {SOURCES_HELP}")
    return from_checkpoint(path, arch, patch_size, which, num_heads=num_heads)
