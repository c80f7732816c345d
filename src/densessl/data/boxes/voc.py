"""Pascal VOC detection boxes (VOC07 / VOC12 ``trainval``), as LOST reads them.

Layout (torchvision ``VOCDetection``; valeoai/LOST @fcedbec, datasets.py:88-95)::

    ROOT/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    ROOT/VOCdevkit/VOC2007/Annotations/<id>.xml
    ROOT/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt

(``ROOT`` may also be the ``VOC2007`` folder itself.) Boxes follow LOST's ``extract_gt_VOC``
(datasets.py:251-279): ``xmin - 1, ymin - 1, xmax, ymax`` (VOC's 1-based inclusive pixels to
``[x0, x1)``), every object kept, difficult and truncated included, unless
``remove_hards=True`` (LOST ``--no_hard``: only objects neither difficult nor truncated, and
images left without one are skipped).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densessl.data.segmentation.files import read_split_file, require_paths
from densessl.errors import DataError
from densessl.io.decode import display_path, load_rgb
from densessl.io.paths import user_path

__all__ = ["VOC07Boxes", "VOC12Boxes", "VOCBoxes", "read_voc_boxes"]


def read_voc_boxes(path: Path, remove_hards: bool = False) -> tuple[list[list[int]], list[str]]:
    """``(boxes [[x0, y0, x1, y1], ...], class names)`` of one VOC annotation XML."""
    try:
        root = ET.parse(path).getroot()
        boxes, names = [], []
        for obj in root.iter("object"):
            hard = obj.findtext("difficult", "0").strip() == "1"
            hard = hard or obj.findtext("truncated", "0").strip() == "1"
            if remove_hards and hard:
                continue
            box = obj.find("bndbox")
            values = [int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")]
            boxes.append([values[0] - 1, values[1] - 1, values[2], values[3]])
            names.append(str(obj.findtext("name", "")).strip())
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DataError(f"{display_path(path)}: not a VOC annotation ({err})") from err
    return boxes, names


class VOCBoxes(Dataset):
    """VOC detection images and their ground-truth boxes.

    Args:
        root: the folder holding ``VOCdevkit/VOC<year>`` (or that folder itself).
        split: an ``ImageSets/Main`` list (``trainval``, the LOST split; ``train``, ``val``).
        year: ``"2007"`` or ``"2012"``.
        remove_hards: LOST's ``--no_hard``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "trainval",
        year: str = "2007",
        remove_hards: bool = False,
    ) -> None:
        root = user_path(root)
        base = root if (root / "JPEGImages").is_dir() else root / "VOCdevkit" / f"VOC{year}"
        layout = (
            f"VOC{year} detection layout: ROOT/VOCdevkit/VOC{year}/{{JPEGImages/*.jpg, "
            f"Annotations/*.xml, ImageSets/Main/{split}.txt}}"
        )
        split_file = base / "ImageSets" / "Main" / f"{split}.txt"
        require_paths(layout, [base / "JPEGImages", base / "Annotations", split_file], root)
        ids = read_split_file(split_file)
        xmls = [base / "Annotations" / f"{i}.xml" for i in ids]
        require_paths(layout, xmls, root)
        self.samples: list[tuple[str, Path, torch.Tensor]] = []
        for i, xml in zip(ids, xmls, strict=True):
            boxes, _ = read_voc_boxes(xml, remove_hards)
            if remove_hards and not boxes:
                continue
            tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            self.samples.append((i, base / "JPEGImages" / f"{i}.jpg", tensor))
        require_paths(layout, [p for _, p, _ in self.samples], root)
        self.root, self.split, self.year = root, split, year

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, path, boxes = self.samples[i]
        return {"image": load_rgb(path), "boxes": boxes.clone(), "name": name, "index": i}


class VOC07Boxes(VOCBoxes):
    """VOC2007 (``ROOT/VOCdevkit/VOC2007``)."""

    def __init__(
        self, root: str | os.PathLike[str], split: str = "trainval", remove_hards: bool = False
    ) -> None:
        super().__init__(root, split, "2007", remove_hards)


class VOC12Boxes(VOCBoxes):
    """VOC2012 (``ROOT/VOCdevkit/VOC2012``)."""

    def __init__(
        self, root: str | os.PathLike[str], split: str = "trainval", remove_hards: bool = False
    ) -> None:
        super().__init__(root, split, "2012", remove_hards)
