"""``densessl.evaluate(...)`` and ``densessl eval``: one protocol, one backbone, one dataset.

Protocols and datasets come from their registries
(:mod:`densessl.evaluation.registry`, :mod:`densessl.data.registry`): each protocol record
names its settings dataclass, its splits, the kind of dataset it reads and the official
code it follows; ``dataset`` names a layout of that kind (``scenes``: its synthetic
counterpart).
The built-in protocols and the splits they use:

================  ========================================  ===============================
protocol          what                                      splits
================  ========================================  ===============================
``linear``        Leopart linear probe (1x1 conv on frozen  train on ``train`` (VOC:
                  patch features, SGD), mIoU, no matching   ``trainaug``; COCO: a seeded
                                                            10%), score ``val``
``cluster``       Leopart overclustering: standardise,      transductive on ``val``
                  PCA-50, k-means over seeds, Hungarian
                  (K = C) / many-to-one (K > C)
``retrieval``     Hummingbird dense NN retrieval (k = 30,   memory from ``train`` (VOC:
                  T = 0.02, 102,400-patch memory)           ``trainaug``), query ``val``
``unsupervised``  Leopart fully-unsupervised segmentation:  both clustered; ``train``
                  CBFE (spherical k-means, attention        labels choose the CBFE cut and
                  precision) + community detection          the CD settings; ``val`` scored
                  (Infomap / Leiden), Hungarian             (VOC: ``train``, not trainaug)
``knn``           DINO weighted 20-NN on image features,    memory ``train``, score ``val``
                  top-1 / top-5 (classification layouts)
``linear_cls``    DINO linear classifier on image features  train ``train``, score ``val``
``discovery``     LOST boxes, CorLoc (box layouts)          ``trainval`` (VOC), ``train``
                                                            (COCO-20k), ``val`` (scenes)
``video``         DINO DAVIS-2017 label propagation, J&F    transductive on ``val`` (DAVIS
                  (video layouts)                           ``ImageSets/2017/val.txt``)
correspondence    Probe3D NN keypoint transfer, PCK@0.1     ``test`` (SPair-71k)
                  by the target box (keypoint pairs)
================  ========================================  ===============================

Real datasets get the papers' settings (each record's defaults; overclustering's
:meth:`~densessl.evaluation.overcluster.OverclusterProtocol.for_voc`: K = C, 300, 500, with
faiss PCA and k-means as Leopart, so ``pip install 'densessl[faiss]'``); the synthetic scenes
get each protocol's ``for_scenes`` CPU preset at the scenes' resolution.
Any setting can be overridden by name (``epochs=10``, ``seeds=[0]``); dataset options go
under ``data.`` (``data.num_images=200``). An unknown name is an error listing valid ones.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densessl.config.coerce import coerce_value, parse_override_items
from densessl.config.strict_yaml import OverrideValue
from densessl.data.registry import DatasetRecord
from densessl.data.registry import get_dataset as _get_dataset
from densessl.errors import ConfigError, brief
from densessl.evaluation.checks import check_against_backbone, coerce_dataset_options
from densessl.evaluation.checks import plain_hint as _plain_hint
from densessl.evaluation.features import PatchFeatureExtractor, build_extractor
from densessl.evaluation.registry import get_protocol
from densessl.evaluation.report import format_table, jsonable, summarize
from densessl.evaluation.result_file import check_result_path, write_result
from densessl.ops.devices import parse_device

__all__ = ["default_splits", "evaluate", "resolve_protocol"]


def get_dataset(protocol: str, dataset: str) -> DatasetRecord:
    """The layout ``dataset`` of the kind that ``protocol`` reads.

    Raises:
        ConfigError: unknown protocol, or no such layout of its kind.
    """
    try:
        return _get_dataset(dataset, get_protocol(protocol).kind)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def default_splits(protocol: str, dataset: str) -> tuple[str | None, str]:
    """``(train split or None, scored split)`` of ``protocol`` on ``dataset``."""
    return get_protocol(protocol).splits(get_dataset(protocol, dataset).name)


def _coerce_settings(cls: type, values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        hint = _plain_hint(hints[key])
        variadic = typing.get_origin(hint) is tuple and typing.get_args(hint)[-1] is Ellipsis
        read = value.value if isinstance(value, OverrideValue) else value
        if variadic and not isinstance(read, list | tuple):
            value = [value]  # seeds=0 means seeds=[0]
        out[key] = coerce_value(value, hint, f"{prefix}.{key}")
    return out


def _split_overrides(
    protocol: str, dataset: str, root: Any, values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate protocol settings from ``data.*`` dataset options; reject unknown keys."""
    cls = get_protocol(protocol).settings
    settings = set(get_protocol(protocol).setting_names())
    data_keys = get_dataset(protocol, dataset).option_names(root)
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key == "data" and isinstance(value, Mapping):
            flat.update({f"data.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    chosen, data = {}, {}
    for key, value in flat.items():
        if key.startswith("data.") and key[5:] in data_keys:
            data[key[5:]] = value
        elif key in settings:
            chosen[key] = value
        else:
            raise ConfigError(
                f"unknown {protocol} setting {brief(key)}; valid settings: "
                f"{', '.join(sorted(settings))}; dataset options ({dataset}): "
                f"{', '.join('data.' + k for k in data_keys)}"
            )
    data = coerce_dataset_options(get_dataset(protocol, dataset).dataset_class(root), data)
    return _coerce_settings(cls, chosen, protocol), data


def resolve_protocol(
    protocol: str, dataset: str, settings: Mapping[str, Any], image_size: int | None = None
) -> Any:
    """The protocol dataclass: the dataset's preset with ``settings`` applied.

    Args:
        protocol: a registered protocol name (or alias).
        dataset: a registered dataset name.
        settings: already coerced field values.
        image_size: the scenes preset's resolution (scenes only).

    Raises:
        ConfigError: a value the protocol refuses (its ``__post_init__`` checks).
    """
    name = get_dataset(protocol, dataset).name
    return get_protocol(protocol).resolve(name, settings, image_size)


def _build_dataset(record: DatasetRecord, root: Any, split: str, options: Mapping[str, Any]) -> Any:
    dataset = record.name
    try:
        return record.build(root, split, **options)
    except FileNotFoundError as err:
        hint = record.missing_hints.get(split)
        raise FileNotFoundError(f"{err} ({hint})" if hint else str(err)) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"dataset {brief(dataset)} ({split}): {err}") from err


def _num_classes(dataset: Any) -> int | None:
    classes = getattr(dataset, "num_classes", None)
    return None if classes is None else int(classes)


def _scene_size(dataset: Any, patch_size: int | None) -> int:
    side = getattr(dataset, "image_size", None)
    if side is None:
        side = int(min(dataset[0]["image"].shape[-2:]))
    p = int(patch_size or 1)
    return max(p, round(side / p) * p)


def _extractor(backbone: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if isinstance(backbone, PatchFeatureExtractor):
        return backbone, backbone.source
    if isinstance(backbone, str | Path):
        extractor = build_extractor(backbone, **options)
        return extractor, extractor.source
    from densessl.models.vit import ViTBackbone

    if isinstance(backbone, ViTBackbone):
        source = {"kind": "module", "description": f"ViTBackbone {backbone.config.arch}"}
        return PatchFeatureExtractor(backbone, backbone.patch_size, source), source
    if callable(backbone):
        return backbone, {"kind": "callable", "description": repr(backbone)[:80]}
    raise ConfigError(
        f"backbone must be a path, a string source or an extractor, got {brief(backbone)}"
    )


def evaluate(
    protocol: str,
    backbone: str | Path | nn.Module | Callable[[torch.Tensor], torch.Tensor],
    dataset: str = "scenes",
    root: str | Path | None = None,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    arch: str | None = None,
    patch_size: int | None = None,
    which: str = "teacher",
    weights: str | Path | None = None,
    init_seed: int = 0,
    train_split: str | None = None,
    val_split: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: bool = True,
    **protocol_overrides: Any,
) -> dict[str, Any]:
    """Evaluate a frozen backbone's patch features with one dense protocol.

    Args:
        protocol: a registered protocol (:func:`~densessl.evaluation.registry.list_protocols`:
            ``"linear"``, ``"cluster"``, ``"retrieval"``, ``"unsupervised"``, ``"knn"``,
            ``"linear_cls"``, ``"discovery"``, ``"video"``, ``"correspondence"``).
        backbone: a run directory, checkpoint, export, ``"timm:NAME"`` (with ``weights``),
            ``"random:ARCH"`` / ``"random:RUN_DIR"`` (see
            :func:`~densessl.evaluation.features.build_extractor`), a ``ViTBackbone`` or any
            extractor callable ``images -> patches [B, h, w, D]``.
        dataset: a registered layout of the protocol's kind (segmentation: ``"scenes"``,
            ``"voc"``, ``"cocostuff"``, ``"cocothings"``, ``"ade20k"``; classification:
            ``"scenes"``, ``"imagenet"``; boxes: ``"scenes"``, ``"voc07"``, ``"voc12"``,
            ``"coco20k"``; video: ``"scenes"``, ``"davis"``; keypoint pairs: ``"scenes"``,
            ``"spair"``).
        root: dataset folder (``None`` for scenes renders them on the fly).
        out: write the result as JSON here (folders are created); an existing file must be
            an earlier densessl result (replaced), anything else is refused.
        overrides: ``["epochs=10", "data.num_images=200"]`` strings or a mapping.
        data: dataset options (``{"num_images": 200}``), same as ``data.*`` overrides.
        arch / patch_size / which / weights / init_seed: how to load ``backbone``.
        train_split / val_split: override the protocol's splits (``None``: its defaults).
        device: where to run (default: CUDA when available, else CPU).
        progress: tqdm progress bars.
        verbose: print the result table.
        **protocol_overrides: protocol settings by name (``seeds=[0]``, ``num_neighbors=10``).

    Returns:
        ``{"protocol", "settings", "backbone", "dataset", "results", "summary", "seconds",
        "source", "device", "densessl_version"}``; ``summary`` rows hold ``result``, ``miou``,
        ``std``, ``matching`` and ``protocol`` (the settings in words).

    Raises:
        ConfigError: unknown protocol, dataset or setting; a bad value.
        CheckpointError: the backbone cannot be loaded.
        FileNotFoundError: dataset files missing (the message names what is expected where).
    """
    start = time.perf_counter()
    out_path = check_result_path(out)  # before any work: never over a user's file
    default = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(device or default, "--device")  # cuda:7 on a CPU machine: refused
    spec = get_protocol(protocol)
    name = spec.name
    layout = get_dataset(name, dataset)
    key = layout.name
    if key not in spec.datasets:
        raise ConfigError(
            f"protocol {name!r} does not take dataset {key!r}; it takes {', '.join(spec.datasets)}"
        )
    if layout.needs_root and root is None:
        raise ConfigError(
            f"dataset {brief(dataset)} needs root (--root DIR): the folder holding it"
        )
    values: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        values.update(overrides)
    elif overrides:
        values.update(parse_override_items(list(overrides)))
    values.update(protocol_overrides)
    if data:
        values["data"] = {**values.get("data", {}), **data}
    settings, options = _split_overrides(name, key, root, values)

    default_train, default_val = spec.splits(key)
    splits = (train_split or default_train, val_split or default_val)
    if train_split is None:  # e.g. Leopart's linear probe on 10% of COCO train2017
        train_options = {**spec.train_options.get(key, {}), **options}
    else:
        train_options = options
    val = _build_dataset(layout, root, splits[1], options)
    train = None if splits[0] is None else _build_dataset(layout, root, splits[0], train_options)

    resolve_protocol(name, key, settings)  # bad values fail before the backbone loads
    load = {"arch": arch, "patch_size": patch_size, "which": which}
    extractor, source = _extractor(backbone, {**load, "weights": weights, "seed": init_seed})
    if isinstance(extractor, nn.Module):
        extractor = extractor.to(device)

    size = _scene_size(val, getattr(extractor, "patch_size", None)) if key == "scenes" else None
    chosen = resolve_protocol(name, key, settings, size)
    check_against_backbone(name, chosen, getattr(extractor, "patch_size", None))

    results = jsonable(spec.run(extractor, train, val, chosen, device=device, progress=progress))
    results.pop("protocol", None)
    from densessl import __version__

    record: dict[str, Any] = {
        "protocol": name,
        "settings": jsonable(dataclasses.asdict(chosen)),
        "source": spec.source,
        "backbone": jsonable(source),
        "dataset": {
            "name": key,
            "root": None if root is None else str(root),
            "train_split": splits[0] if train is not None else None,
            "val_split": splits[1],
            "num_train": None if train is None else len(train),
            "num_val": len(val),
            "kind": layout.kind,
            "num_classes": _num_classes(val),
            "class_names": list(getattr(val, "class_names", [])),
            "options": jsonable(options),
        },
        "results": results,
        "device": str(device),
        "densessl_version": __version__,
    }
    record["summary"] = summarize(name, chosen, results)
    record["seconds"] = round(time.perf_counter() - start, 3)
    if out_path is not None:
        write_result(out_path, record)
        record["json"] = str(out_path)
    if verbose:
        print(format_table(record), flush=True)
    return record
