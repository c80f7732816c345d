"""The dataset registry: labeled segmentation layouts by name.

One record per layout: its name, a one-line description (CLI help and reports read it) and
how to build a split of it. ``densessl eval --dataset NAME``, the Python
``evaluate(dataset=NAME)`` and every protocol's accepted-dataset list read this registry;
nothing else lists dataset names. Adding a layout is one module beside this one and one
:func:`register_dataset` call here.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.data.segmentation.ade20k import ADE20K
from densessl.data.segmentation.coco import COCOStuff, COCOThings
from densessl.data.segmentation.scene_folder import SceneFolder
from densessl.data.segmentation.voc import VOCSegmentation
from densessl.errors import brief


@dataclass(frozen=True)
class DatasetRecord:
    """A labeled segmentation layout.

    Attributes:
        name: the name users type (``--dataset NAME``).
        description: one line for ``--help`` and reports.
        cls: the dataset class, built as ``cls(root, split, **options)``.
        on_the_fly: a class built as ``on_the_fly(split=split, **options)`` when no root
            is given (the synthetic scenes); None = the layout needs a root.
        split_names: user split name → the layout's own (ADE20K's ``training``).
        missing_hints: split → a hint added when its files are missing.
    """

    name: str
    description: str
    cls: type[Dataset]
    on_the_fly: type[Dataset] | None = None
    split_names: Mapping[str, str] = field(default_factory=dict)
    missing_hints: Mapping[str, str] = field(default_factory=dict)

    @property
    def needs_root(self) -> bool:
        return self.on_the_fly is None

    def dataset_class(self, root: object | None) -> type[Dataset]:
        """The class that :meth:`build` uses for ``root``."""
        if root is None and self.on_the_fly is not None:
            return self.on_the_fly
        return self.cls

    def option_names(self, root: object | None) -> list[str]:
        """Keyword options the dataset takes (``data.KEY=VALUE`` on the command line)."""
        params = inspect.signature(self.dataset_class(root)).parameters
        return sorted(k for k in params if k not in ("self", "root", "split"))

    def build(self, root: str | os.PathLike[str] | None, split: str, **options: Any) -> Dataset:
        if root is None:
            if self.on_the_fly is None:
                raise ValueError(f"dataset {self.name!r} needs root= (the folder holding it)")
            return self.on_the_fly(split=split, **options)
        return self.cls(root, self.split_names.get(split, split), **options)


_DATASETS: dict[str, DatasetRecord] = {}


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Make ``record`` available by its name."""
    if record.name in _DATASETS and _DATASETS[record.name] != record:
        raise ValueError(f"dataset name {record.name!r} is already registered")
    _DATASETS[record.name] = record
    return record


register_dataset(
    DatasetRecord(
        "scenes",
        "synthetic scenes with exact dense labels: rendered on the fly, or a folder written "
        "by `densessl scenes` given as --root",
        SceneFolder,
        on_the_fly=SyntheticScenes,
    )
)
register_dataset(
    DatasetRecord(
        "voc",
        "Pascal VOC 2012 (+ SBD trainaug), 21 classes",
        VOCSegmentation,
        missing_hints={
            "trainaug": "no SBD trainaug here? train_split='train' uses the 1,464 official images"
        },
    )
)
register_dataset(
    DatasetRecord("cocostuff", "Leopart's coarse COCO-Stuff: 15 stuff super-categories", COCOStuff)
)
register_dataset(
    DatasetRecord("cocothings", "Leopart's COCO-Things: 12 thing super-categories", COCOThings)
)
register_dataset(
    DatasetRecord(
        "ade20k",
        "ADEChallengeData2016, 150 classes",
        ADE20K,
        split_names={"train": "training", "val": "validation"},
    )
)


def list_datasets() -> dict[str, DatasetRecord]:
    """Every registered layout by name, in registration order."""
    return dict(_DATASETS)


def dataset_names() -> tuple[str, ...]:
    """The names accepted by :func:`build_segmentation_dataset`."""
    return tuple(_DATASETS)


def get_dataset(name: str) -> DatasetRecord:
    """The record of ``name`` (case, ``-`` and ``_`` ignored); ``ValueError`` if unknown."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _DATASETS:
        raise ValueError(
            f"unknown dataset {brief(name)}; choose one of {', '.join(dataset_names())}"
        )
    return _DATASETS[key]


def build_segmentation_dataset(
    name: str, root: str | os.PathLike[str] | None = None, split: str = "train", **kwargs: Any
) -> Dataset:
    """Build a labeled dataset by name.

    Args:
        name: a registered name (:func:`dataset_names`): ``"scenes"``, ``"voc"``,
            ``"cocostuff"``, ``"cocothings"``, ``"ade20k"``.
        root: Dataset folder. For ``"scenes"``: ``None`` renders
            :class:`~densessl.data.scenes.dataset.SyntheticScenes` on the fly (the val split
            holds scene indices disjoint from train), a folder gives :class:`SceneFolder`.
        split: Split name. ``"train"`` / ``"val"`` work for every dataset (mapped to
            ADE20K's ``"training"`` / ``"validation"``); VOC also takes ``"trainaug"`` and
            ``"trainval"``.
        **kwargs: Passed to the dataset class (for on-the-fly scenes: ``num_images``,
            ``size``, ``seed``, ``config``, ``val_fraction``).

    Raises:
        ValueError: Unknown name, or a real dataset without ``root``.
    """
    return get_dataset(name).build(root, split, **kwargs)
