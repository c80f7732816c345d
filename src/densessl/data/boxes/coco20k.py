"""COCO-20k (LOST's 19,817-image subset of COCO train2014) with its ground-truth boxes.

Layout (valeoai/LOST @fcedbec, datasets.py:61-78 and :336-366, README "COCO20k")::

    ROOT/images/train2014/COCO_train2014_<id>.jpg
    ROOT/annotations/instances_train2014.json
    ROOT/coco_20k_filenames.txt      lines "train2014/COCO_train2014_<id>.jpg" (LOST's file)

The images are those of the file list; their annotations are filtered by image id from the
instances JSON (``select_coco_20k``). Images are read in increasing image id, as
torchvision's ``CocoDetection`` over the selected JSON does. Boxes follow
``extract_gt_COCO`` (datasets.py:231-248): ``iscrowd`` objects dropped, ``xywh`` to
``x0, y0, x1, y1`` with each coordinate ``int(round())``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densessl.data.segmentation.files import require_paths
from densessl.errors import DataError
from densessl.io.decode import display_path, load_rgb
from densessl.io.paths import user_path

__all__ = ["COCO20kBoxes", "coco_boxes"]

LAYOUT = (
    "COCO-20k layout: ROOT/images/train2014/*.jpg, ROOT/annotations/instances_train2014.json, "
    "ROOT/coco_20k_filenames.txt (LOST's list)"
)


def coco_boxes(annotations: list[dict[str, Any]]) -> list[list[int]]:
    """LOST's ``extract_gt_COCO`` boxes of one image's annotations (iscrowd dropped)."""
    boxes = []
    for ann in annotations:
        if ann.get("iscrowd", 0) == 1:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.append([round(v) for v in (x, y, x + w, y + h)])
    return boxes


def _image_id(line: str) -> int:
    return int(Path(line).stem.split("_")[-1])


class COCO20kBoxes(Dataset):
    """COCO-20k images and boxes.

    Args:
        root: see the layout above.
        split: ``train`` (the only split: COCO-20k is a subset of train2014).
        file_list / annotations: paths relative to ``root`` (or absolute).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        file_list: str = "coco_20k_filenames.txt",
        annotations: str = "annotations/instances_train2014.json",
    ) -> None:
        root = user_path(root)
        if split != "train":
            raise ValueError(f"COCO-20k has one split, 'train' (of train2014), got {split!r}")
        list_path, ann_path = root / file_list, root / annotations
        require_paths(LAYOUT, [list_path, ann_path], root)
        lines = [s.strip() for s in list_path.read_text().splitlines() if s.strip()]
        try:
            wanted = {_image_id(line): line for line in lines}
            data = json.loads(ann_path.read_text())
            by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in wanted}
            for ann in data["annotations"]:
                if ann["image_id"] in by_image:
                    by_image[ann["image_id"]].append(ann)
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{display_path(ann_path)} / {display_path(list_path)}: {err}") from err
        self.samples: list[tuple[str, Path, torch.Tensor]] = []
        for image_id in sorted(wanted):
            boxes = torch.tensor(coco_boxes(by_image[image_id]), dtype=torch.float32)
            path = root / "images" / wanted[image_id]
            self.samples.append((str(image_id), path, boxes.reshape(-1, 4)))
        require_paths(LAYOUT, [p for _, p, _ in self.samples], root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, path, boxes = self.samples[i]
        return {"image": load_rgb(path), "boxes": boxes.clone(), "name": name, "index": i}
