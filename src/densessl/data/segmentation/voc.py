"""Pascal VOC 2012 semantic segmentation (21 classes incl. background; 255 = boundary).

Two on-disk layouts are recognised (``root`` may also be their parent folder:
``VOCdevkit/`` holding ``VOC2012/``, or Leopart's ``data_dir`` holding ``VOCSegmentation/``).

**VOC2012 layout** (the official ``VOCtrainval_11-May-2012`` archive, plus SBD)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png            palette PNG, indices 0-20, 255 = boundary
    ROOT/ImageSets/Segmentation/{train,val,trainval}.txt
    ROOT/SegmentationClassAug/<id>.png         only for "trainaug": SBD-augmented labels
    ROOT/ImageSets/Segmentation/trainaug.txt   only for "trainaug": 10,582 ids

``SegmentationClassAug`` is the widely shared grayscale conversion of SBD (+ VOC) labels
(the DeepLab ``SegmentationClassAug.zip``); ``trainaug.txt`` may list plain ids or DeepLab's
``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs.

**Leopart layout** (MkuuWaUjinga/leopart ``data/VOCdevkit/vocdata.py``; its ``data_dir`` holds
``VOCSegmentation/``)::

    ROOT/images/<id>.jpg
    ROOT/sets/{trainaug,train,val}.txt
    ROOT/SegmentationClassAug/<id>.png         labels of every split but "val"
    ROOT/SegmentationClass/<id>.png            labels of "val"

In the VOC2012 layout ``train`` / ``val`` / ``trainval`` use ``SegmentationClass`` (the
official labels); Leopart's own loader reads ``train`` labels from ``SegmentationClassAug``.
The linear probe of Leopart trains on ``trainaug`` (10,582) and evaluates on ``val``
(1,449); the fully unsupervised protocol uses ``train`` (1,464) and ``val``.
"""

from __future__ import annotations

import os
from pathlib import Path

from densessl.data.segmentation.files import (
    IGNORE_INDEX,
    SegmentationFiles,
    check_files_exist,
    lookup_table,
    read_split_file,
    require_paths,
)
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = ["VOC_CLASSES", "VOCSegmentation"]

#: Class names in index order (Leopart's ``CLASS_IDX_TO_NAME``; VOC devkit names).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_VOC_LAYOUT = (
    "VOC2012 layout: ROOT/JPEGImages/*.jpg, ROOT/{label_dir}/*.png, "
    "ROOT/ImageSets/Segmentation/{split}.txt"
)
_LEOPART_LAYOUT = (
    "Leopart VOC layout: ROOT/images/*.jpg, ROOT/{label_dir}/*.png, ROOT/sets/{split}.txt"
)


def _resolve_root(root: Path) -> tuple[Path, str]:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate, "voc2012"
    for candidate in (root, root / "VOCSegmentation"):
        if (candidate / "images").is_dir() and (candidate / "sets").is_dir():
            return candidate, "leopart"
    raise FileNotFoundError(
        f"no Pascal VOC data under {display_path(root)}: expected either the VOC2012 layout "
        "(ROOT/JPEGImages/*.jpg, ROOT/SegmentationClass/*.png, "
        "ROOT/ImageSets/Segmentation/<split>.txt; for 'trainaug' also "
        "ROOT/SegmentationClassAug/*.png and ROOT/ImageSets/Segmentation/trainaug.txt) or "
        "Leopart's layout (ROOT/images/*.jpg, ROOT/sets/<split>.txt, "
        "ROOT/SegmentationClass/*.png, ROOT/SegmentationClassAug/*.png); ROOT may also be "
        "VOCdevkit/ or the folder holding VOCSegmentation/"
    )


class VOCSegmentation(SegmentationFiles):
    """Pascal VOC 2012 segmentation: 21 classes (0 = background), 255 = ignore (boundary).

    Args:
        root: ``VOCdevkit/VOC2012``-style folder or Leopart's ``VOCSegmentation`` folder (or a
            parent of either); see the module docstring for both layouts.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"trainaug"`` (``"train_aug"`` is
            accepted too). Any other name with a split file also works.
        size_mismatch: ``"error"`` (default: VOC labels always match their image) or
            ``"resize"``.

    Raises:
        FileNotFoundError: A folder, the split file or a listed image/label is missing.
        ValueError: (when loading an item) label ids outside 0-20 and 255, a non
            single-channel label PNG, or an image/label size mismatch.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", size_mismatch: str = "error"
    ) -> None:
        given = user_path(root)
        split = "trainaug" if split == "train_aug" else split
        root_path, layout = _resolve_root(given)
        if layout == "voc2012":
            image_dir, ext = root_path / "JPEGImages", ".jpg"
            label_dir = root_path / (
                "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
            )
            split_file = root_path / "ImageSets" / "Segmentation" / f"{split}.txt"
            template = _VOC_LAYOUT
        else:
            image_dir, ext = root_path / "images", ".jpg"
            label_dir = root_path / (
                "SegmentationClass" if split == "val" else "SegmentationClassAug"
            )
            split_file = root_path / "sets" / f"{split}.txt"
            template = _LEOPART_LAYOUT
        description = template.format(label_dir=label_dir.name, split=split)
        require_paths(description, [image_dir, label_dir, split_file], root_path)
        stems = read_split_file(split_file)
        check_files_exist(image_dir, [s + ext for s in stems], "images", description)
        check_files_exist(label_dir, [s + ".png" for s in stems], "label files", description)
        table = lookup_table(
            {**{c: c for c in range(len(VOC_CLASSES))}, IGNORE_INDEX: IGNORE_INDEX}
        )
        super().__init__(
            [image_dir / (s + ext) for s in stems],
            [label_dir / (s + ".png") for s in stems],
            VOC_CLASSES,
            table,
            name=f"VOC {split}",
            size_mismatch=size_mismatch,
        )
        self.root, self.layout, self.split, self.stems = root_path, layout, split, stems
