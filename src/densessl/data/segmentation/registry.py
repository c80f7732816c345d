"""The segmentation layouts of the dataset registry (:mod:`densessl.data.registry`).

The registry holds every kind of layout; this module is its segmentation view, kept for the
callers that build labeled segmentation sets by name.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from densessl.data import registry as _registry
from densessl.data.registry import DatasetRecord, register_dataset

__all__ = [
    "DatasetRecord",
    "build_segmentation_dataset",
    "dataset_names",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]


def list_datasets() -> dict[str, DatasetRecord]:
    """Every registered segmentation layout by name, in registration order."""
    return _registry.list_datasets("segmentation")


def dataset_names() -> tuple[str, ...]:
    """The names accepted by :func:`build_segmentation_dataset`."""
    return _registry.dataset_names("segmentation")


def get_dataset(name: str) -> DatasetRecord:
    """The segmentation record of ``name`` (case, ``-`` and ``_`` ignored); ``ValueError``
    if unknown."""
    return _registry.get_dataset(name, "segmentation")


def build_segmentation_dataset(
    name: str, root: str | os.PathLike[str] | None = None, split: str = "train", **kwargs: Any
) -> Dataset:
    """Build a labeled segmentation dataset by name.

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
    return _registry.build_dataset(name, root, split, "segmentation", **kwargs)
