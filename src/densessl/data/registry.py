"""The dataset registry: every dataset layout by *kind* and name.

One record per layout: its kind (what its items hold, :data:`KINDS`), its name, a one-line
description (CLI help and reports read it) and how to build a split of it from a root
folder. Every kind has a ``"scenes"`` layout: the synthetic counterpart with exact ground
truth, rendered in memory when no root is given. A protocol names the kind it reads
(:attr:`densessl.evaluation.registry.ProtocolRecord.kind`) and accepts that kind's layouts;
``densessl eval PROTOCOL --dataset NAME``, the Python ``evaluate(dataset=NAME)`` and every
protocol's accepted-dataset list read this registry; nothing else lists dataset names.
Adding a layout is one module in its kind's package and one :func:`register_dataset` call
below (``docs/adding-a-protocol.md``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from densessl.data.boxes.coco20k import COCO20kBoxes
from densessl.data.boxes.scene_boxes import SceneFolderBoxes, SyntheticSceneBoxes
from densessl.data.boxes.voc import VOC07Boxes, VOC12Boxes
from densessl.data.classification.image_folder import ImageFolder
from densessl.data.classification.scene_labels import SceneFolderClasses, SyntheticSceneClasses
from densessl.data.keypoints.scenes import SyntheticPairs, SyntheticPairsFolder
from densessl.data.keypoints.spair import SPairPairs
from densessl.data.scenes.dataset import SyntheticScenes
from densessl.data.segmentation.ade20k import ADE20K
from densessl.data.segmentation.coco import COCOStuff, COCOThings
from densessl.data.segmentation.scene_folder import SceneFolder
from densessl.data.segmentation.voc import VOCSegmentation
from densessl.data.video.davis import DAVISVideos
from densessl.data.video.scenes import SyntheticVideos, SyntheticVideosFolder
from densessl.errors import brief

#: kind -> what each item of its datasets holds (every item also has ``"index": int``;
#: images are ``uint8 [3, H, W]`` RGB in their stored size).
KINDS: dict[str, str] = {
    "segmentation": '{"image", "label": uint8 [H, W] class ids, 255 = ignore}; the dataset '
    "has num_classes, class_names, ignore_index",
    "classification": '{"image", "label": int class id}; the dataset has num_classes, class_names',
    "boxes": '{"image", "boxes": float [N, 4] (x0, y0, x1, y1) pixels}; one image may hold '
    "several objects",
    "video": "one sequence per item: frames and palette masks (DAVIS-2017 layout)",
    "keypoint_pairs": "one image pair per item with corresponding keypoints (SPair-71k layout)",
}


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset layout.

    Attributes:
        name: the name users type (``--dataset NAME``); unique within its kind.
        description: one line for ``--help`` and reports.
        cls: the dataset class, built as ``cls(root, split, **options)``.
        on_the_fly: a class built as ``on_the_fly(split=split, **options)`` when no root
            is given (the synthetic scenes); None = the layout needs a root.
        split_names: user split name → the layout's own (ADE20K's ``training``).
        missing_hints: split → a hint added when its files are missing.
        kind: what its items hold, a key of :data:`KINDS`.
    """

    name: str
    description: str
    cls: type[Dataset]
    on_the_fly: type[Dataset] | None = None
    split_names: Mapping[str, str] = field(default_factory=dict)
    missing_hints: Mapping[str, str] = field(default_factory=dict)
    kind: str = "segmentation"

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


_DATASETS: dict[tuple[str, str], DatasetRecord] = {}


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Make ``record`` available by its kind and name."""
    if record.kind not in KINDS:
        raise ValueError(f"dataset kind {record.kind!r} is not one of {', '.join(KINDS)}")
    key = (record.kind, record.name)
    if key in _DATASETS and _DATASETS[key] != record:
        raise ValueError(f"{record.kind} dataset name {record.name!r} is already registered")
    _DATASETS[key] = record
    return record


def list_datasets(kind: str = "segmentation") -> dict[str, DatasetRecord]:
    """Every registered layout of ``kind`` by name, in registration order."""
    return {name: r for (k, name), r in _DATASETS.items() if k == kind}


def dataset_names(kind: str = "segmentation") -> tuple[str, ...]:
    """The layout names of ``kind`` that :func:`build_dataset` accepts."""
    return tuple(list_datasets(kind))


def get_dataset(name: str, kind: str = "segmentation") -> DatasetRecord:
    """The ``kind`` record of ``name`` (case, ``-`` and ``_`` ignored); ``ValueError`` if
    unknown."""
    key = name.lower().replace("-", "").replace("_", "")
    records = list_datasets(kind)
    if key not in records:
        what = "dataset" if kind == "segmentation" else f"{kind} dataset"
        raise ValueError(f"unknown {what} {brief(name)}; choose one of {', '.join(records)}")
    return records[key]


def build_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    kind: str = "segmentation",
    **options: Any,
) -> Dataset:
    """Build split ``split`` of the ``kind`` layout ``name`` (``root=None``: the synthetic
    scenes, rendered in memory); ``options`` go to the dataset class."""
    return get_dataset(name, kind).build(root, split, **options)


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
register_dataset(
    DatasetRecord(
        "scenes",
        "synthetic scenes labelled by their dominant object class (exact): rendered on the "
        "fly, or a `densessl scenes` folder given as --root",
        SceneFolderClasses,
        on_the_fly=SyntheticSceneClasses,
        kind="classification",
    )
)
register_dataset(
    DatasetRecord(
        "imagenet",
        "a class-per-folder image tree (ImageNet layout): ROOT/{train,val}/<class>/*.jpg",
        ImageFolder,
        kind="classification",
    )
)
register_dataset(
    DatasetRecord(
        "scenes",
        "synthetic scenes with their objects' exact boxes (connected regions of each thing "
        "class): rendered on the fly, or a `densessl scenes` folder given as --root",
        SceneFolderBoxes,
        on_the_fly=SyntheticSceneBoxes,
        kind="boxes",
    )
)
register_dataset(
    DatasetRecord(
        "voc07", "Pascal VOC2007 detection boxes (ROOT/VOCdevkit/VOC2007)", VOC07Boxes, kind="boxes"
    )
)
register_dataset(
    DatasetRecord(
        "voc12", "Pascal VOC2012 detection boxes (ROOT/VOCdevkit/VOC2012)", VOC12Boxes, kind="boxes"
    )
)
register_dataset(
    DatasetRecord(
        "coco20k",
        "LOST's COCO-20k: 19,817 train2014 images and their boxes",
        COCO20kBoxes,
        kind="boxes",
    )
)
register_dataset(
    DatasetRecord(
        "scenes",
        "synthetic videos of moving, occluding textured objects with exact masks (in memory)",
        SyntheticVideosFolder,
        on_the_fly=SyntheticVideos,
        kind="video",
    )
)
register_dataset(
    DatasetRecord(
        "davis",
        "DAVIS-2017 semi-supervised (JPEGImages/480p, Annotations/480p, ImageSets/2017)",
        DAVISVideos,
        kind="video",
    )
)
register_dataset(
    DatasetRecord(
        "scenes",
        "two views (crop, scale, flip) of one synthetic scene with exact keypoint "
        "correspondences (in memory)",
        SyntheticPairsFolder,
        on_the_fly=SyntheticPairs,
        kind="keypoint_pairs",
    )
)
register_dataset(
    DatasetRecord(
        "spair",
        "SPair-71k (PairAnnotation/<split>/*.json, JPEGImages/<category>/), 18 categories",
        SPairPairs,
        kind="keypoint_pairs",
    )
)
