"""``densessl.finetune(...)`` and ``densessl finetune seg``: fine-tune a backbone end to end.

The backbone (any ``--backbone`` form :func:`~densessl.evaluation.features.build_extractor`
reads) is unfrozen, a decoder from :mod:`densessl.evaluation.finetune.registry` is put on
top and both are trained on a labelled segmentation set of the dataset registry (train
split; VOC: ``trainaug``), then scored on its val split. ``out`` is the run folder:
``finetune.pt`` (the resumable checkpoint) and ``finetune.json`` (every setting, the
history, mIoU and per-class IoU). Real datasets get the decoder's published recipe
(:func:`~densessl.evaluation.finetune.settings.ade20k_recipe`), the synthetic scenes its CPU
preset (:func:`~densessl.evaluation.finetune.settings.scenes_recipe`); any setting can be
overridden by name, dataset options go under ``data.``. Running the same command again
after a stop resumes exactly; after the end it re-scores the finished model. Under
``torchrun`` the processes share each global batch (:mod:`densessl.evaluation.finetune.loop`).
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from densessl.config.coerce import coerce_value, parse_override_items
from densessl.config.strict_yaml import OverrideValue
from densessl.data.segmentation.registry import get_dataset
from densessl.errors import ConfigError, brief
from densessl.evaluation.checks import coerce_dataset_options, plain_hint
from densessl.evaluation.features import build_extractor
from densessl.evaluation.finetune.inference import evaluate_segmenter
from densessl.evaluation.finetune.loop import CHECKPOINT, train_segmenter
from densessl.evaluation.finetune.model import SegmentationModel, set_drop_path
from densessl.evaluation.finetune.registry import get_decoder
from densessl.evaluation.finetune.settings import FinetuneSettings, ade20k_recipe, scenes_recipe
from densessl.evaluation.report import jsonable
from densessl.evaluation.result_file import write_result
from densessl.io.paths import user_path
from densessl.models.vit import ViTBackbone
from densessl.ops.devices import parse_device
from densessl.ops.distributed import init_from_env, is_main_process
from densessl.train.precision import autocast, resolve_device, resolve_precision

__all__ = ["RESULT", "finetune"]

RESULT = "finetune.json"
TASKS = ("seg",)
_TRAIN_SPLITS = {"voc": "trainaug"}


def _check_out(out: Path) -> None:
    """A new / empty folder or an earlier fine-tuning run (never a user's files)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the fine-tuning run")
    if not out.is_dir():
        return
    ours = {CHECKPOINT, RESULT}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.name.endswith(".tmp")]
    if foreign:
        raise ConfigError(
            f"--out {out} holds files densessl did not write ({', '.join(sorted(foreign)[:3])}); "
            "give a new or empty folder, or an earlier `densessl finetune` run to resume"
        )


def _settings(dataset: str, decoder: str, values: Mapping[str, Any], size: int) -> FinetuneSettings:
    hints = typing.get_type_hints(FinetuneSettings)
    typed: dict[str, Any] = {}
    for key, value in values.items():
        if key == "decoder":
            raise ConfigError("choose the decoder with --decoder NAME (decoder= in Python)")
        if key not in hints:
            raise ConfigError(
                f"unknown finetune setting {brief(key)}; valid settings: "
                f"{', '.join(sorted(k for k in hints if k != 'decoder'))}"
            )
        hint = plain_hint(hints[key])
        read = value.value if isinstance(value, OverrideValue) else value
        if typing.get_origin(hint) is tuple and not isinstance(read, list | tuple):
            value = [value]
        typed[key] = coerce_value(value, hint, f"finetune.{key}")
    try:
        if dataset == "scenes":
            return scenes_recipe(decoder, size, **typed)
        return ade20k_recipe(decoder, **typed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid finetune settings: {err}") from err


def _dataset(name: str, root: Any, split: str, options: Mapping[str, Any]) -> Any:
    try:
        return get_dataset(name).build(root, split, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"dataset {brief(name)} ({split}): {err}") from err


def finetune(
    task: str = "seg",
    backbone: str | Path | ViTBackbone = "random:vit_tiny",
    dataset: str = "scenes",
    root: str | Path | None = None,
    out: str | Path = "runs/finetune",
    *,
    decoder: str = "linear",
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    arch: str | None = None,
    patch_size: int | None = None,
    which: str = "teacher",
    weights: str | Path | None = None,
    init_seed: int = 0,
    train_split: str | None = None,
    val_split: str = "val",
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: bool = True,
    on_step: Any = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with ``decoder`` on ``dataset`` and score it (module docstring).

    Args:
        task: ``"seg"`` (semantic segmentation; the only task so far).
        backbone: run directory, checkpoint, export, ``timm:NAME``, ``random:ARCH`` or a
            :class:`ViTBackbone` (trained in place).
        dataset / root: a registered segmentation dataset and its folder.
        out: the run folder (``finetune.pt``, ``finetune.json``); same ``out`` = resume.
        decoder: ``"linear"`` or ``"semfpn"`` (:func:`registry.list_decoders`).
        overrides: ``["iterations=100", "data.num_images=50"]`` or a mapping.
        arch / patch_size / which / weights / init_seed: how to load ``backbone``.
        train_split / val_split: the splits (default: ``train``, VOC ``trainaug``; ``val``).
        device: default CUDA when available; progress / verbose: bars and the summary line.
        on_step: called with each finished step count (tests).

    Returns:
        The JSON record: ``task``, ``decoder``, ``settings``, ``source``, ``backbone``,
        ``dataset``, ``results`` (``miou``, ``per_class_iou``, ``pixel_accuracy``,
        ``history``, ...), ``device``, ``seconds``.

    Raises:
        ConfigError: unknown task / decoder / setting, a bad value, a foreign ``out``.
        CheckpointError: the backbone cannot be loaded, or ``out`` holds another run.
        TrainingInterrupted: SIGINT / SIGTERM (resumable).
    """
    start = time.perf_counter()
    if task not in TASKS:
        raise ConfigError(f"unknown finetune task {brief(task)}; choose one of {', '.join(TASKS)}")
    record = get_decoder(decoder)
    out_dir = user_path(out)
    _check_out(out_dir)
    dev = resolve_device("auto") if device is None else parse_device(device, "--device")
    init_from_env(dev)  # torchrun: join the process group (no-op otherwise)
    try:
        key = get_dataset(dataset).name
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if get_dataset(key).needs_root and root is None:
        raise ConfigError(
            f"dataset {brief(dataset)} needs root (--root DIR): the folder holding it"
        )
    values: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        values.update(overrides)
    elif overrides:
        values.update(parse_override_items(list(overrides)))
    data = {k[5:]: v for k, v in values.items() if k.startswith("data.")}
    data.update(values.pop("data", {}) if isinstance(values.get("data"), Mapping) else {})
    values = {k: v for k, v in values.items() if not k.startswith("data.")}
    data = coerce_dataset_options(get_dataset(key).dataset_class(root), data)
    splits = (train_split or _TRAIN_SPLITS.get(key, "train"), val_split)
    train_set = _dataset(key, root, splits[0], data)
    val_set = _dataset(key, root, splits[1], data)
    if int(train_set.num_classes) != int(val_set.num_classes):
        raise ConfigError(f"dataset {key}: train and val have different class counts")

    if isinstance(backbone, ViTBackbone):
        net, source = (
            backbone,
            {"kind": "module", "description": f"ViTBackbone {backbone.config.arch}"},
        )
    else:
        extractor = build_extractor(backbone, arch=arch, patch_size=patch_size, which=which,
                                    weights=weights, seed=init_seed)  # fmt: skip
        net, source = extractor.model, extractor.source
        if not isinstance(net, ViTBackbone):
            raise ConfigError(
                f"finetune needs a densessl ViT backbone; {brief(str(backbone))} is not one"
            )
    p = net.patch_size
    side = int(min(val_set[0]["image"].shape[-2:]))
    settings = _settings(key, decoder, values, max(p, round(side / p) * p))
    if settings.crop_size % p or (settings.eval_mode == "slide" and settings.eval_window % p):
        raise ConfigError(
            f"finetune.crop_size / eval_window must be multiples of the patch size {p}"
        )
    net.requires_grad_(True)
    set_drop_path(net, settings.drop_path)
    blocks = settings.tapped_blocks(len(net.model.blocks))
    torch.manual_seed(settings.seed)  # the decoder's init
    head = record.build(net.embed_dim, int(train_set.num_classes), p, settings)
    model = SegmentationModel(net, head, blocks, settings.norm_blocks)
    trained = train_segmenter(model, train_set, settings, out_dir, jsonable(source), dev,
                              progress, on_step)  # fmt: skip
    dtype, _ = resolve_precision(settings.precision, dev)
    scores = evaluate_segmenter(model, val_set, settings, progress,
                                autocast=lambda: autocast(dev, dtype))  # fmt: skip
    from densessl import __version__

    result: dict[str, Any] = {
        "task": task,
        "protocol": f"finetune-{decoder}",
        "decoder": decoder,
        "settings": jsonable(dataclasses.asdict(settings)),
        "tapped_blocks": blocks,
        "source": record.source,
        "expected_ade20k": record.expected,
        "backbone": jsonable(source),
        "dataset": {"name": key, "root": None if root is None else str(root),
                    "train_split": splits[0], "val_split": splits[1],
                    "num_train": len(train_set), "num_val": len(val_set),
                    "num_classes": int(val_set.num_classes),
                    "class_names": list(val_set.class_names), "options": jsonable(data)},
        "results": jsonable({**scores, **trained}),
        "device": str(dev),
        "densessl_version": __version__,
        "seconds": round(time.perf_counter() - start, 3),
    }  # fmt: skip
    if is_main_process():
        write_result(out_dir / RESULT, result)
    result["json"] = str(out_dir / RESULT)
    if verbose and is_main_process():
        miou, acc = 100 * scores["miou"], 100 * scores["pixel_accuracy"]
        line = f"finetune {decoder} on {key}: mIoU {miou:.2f} (pixel acc {acc:.1f})"
        print(f"{line} -> {out_dir / RESULT}", flush=True)
    return result
