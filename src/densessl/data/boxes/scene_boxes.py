"""The synthetic counterpart of an object-discovery set: scenes with their objects' exact boxes.

The scenes renderer (:mod:`densessl.data.scenes.dataset`) draws exact label maps but no
instance ids, so an object is a connected region (8-connectivity) of one thing class in the
label map, ambiguous (255) pixels excluded; its box is ``[min, max + 1)`` of its pixels
``(x0, y0, x1, y1)``. Overlapping objects of one class merge into one box, and an object
split by an occluder gives one box per visible piece; regions under ``min_area`` pixels are
dropped. Scenes left without a box are left out of the split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.data.segmentation.scene_folder import SceneFolder
from densessl.io.paths import user_path

__all__ = ["SceneFolderBoxes", "SyntheticSceneBoxes", "object_boxes"]


def object_boxes(label: torch.Tensor, things: list[int], min_area: int = 16) -> torch.Tensor:
    """Boxes ``float32 [N, 4]`` (x0, y0, x1, y1) of the connected regions of each thing class."""
    label_np = np.asarray(label)
    boxes = []
    for cls in things:
        regions, _ = ndimage.label(label_np == cls, structure=np.ones((3, 3), bool))
        for r, where in enumerate(ndimage.find_objects(regions), start=1):
            if where is None or int((regions[where] == r).sum()) < min_area:
                continue
            ys, xs = where
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


class _SceneBoxes(Dataset):
    def __init__(self, scenes: Dataset, things: list[int], min_area: int) -> None:
        if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
            raise ValueError(f"min_area must be an integer >= 1, got {min_area!r}")
        self.scenes = scenes
        self.items: list[tuple[int, torch.Tensor]] = []
        for i in range(len(scenes)):  # type: ignore[arg-type]
            boxes = object_boxes(scenes[i]["label"], things, min_area)
            if len(boxes):
                self.items.append((i, boxes))
        self.dropped = len(scenes) - len(self.items)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j, boxes = self.items[i]
        item = self.scenes[j]
        index = int(item["index"])
        return {"image": item["image"], "boxes": boxes, "name": f"scene_{index:06d}",
                "index": index}  # fmt: skip


class SyntheticSceneBoxes(_SceneBoxes):
    """Scenes rendered on the fly with their objects' boxes.

    Args:
        split / num_images / size / seed / val_fraction / class_set / colours / objects /
        radius: as
            :class:`~densessl.data.scenes.dataset.SyntheticScenes`.
        min_area: smallest object region kept, in pixels.
    """

    def __init__(
        self,
        split: str = "val",
        num_images: int = 200,
        size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.5,
        class_set: str | None = None,
        colours: str | None = None,
        objects: Sequence[int] | None = None,
        radius: Sequence[float] | None = None,
        min_area: int = 16,
    ) -> None:
        scene = {"class_set": class_set, "colours": colours, "objects": objects, "radius": radius}
        scenes = SyntheticScenes(num_images, size, seed, split, val_fraction=val_fraction, **scene)
        s = scenes.config.num_stuff_classes
        super().__init__(scenes, list(range(s, scenes.num_classes)), min_area)


class SceneFolderBoxes(_SceneBoxes):
    """A ``densessl scenes`` folder with its objects' boxes (thing ids from ``classes.json``)."""

    def __init__(
        self, root: str | os.PathLike[str], split: str = "val", min_area: int = 16
    ) -> None:
        scenes = SceneFolder(root, split)
        meta = json.loads((user_path(root) / "classes.json").read_text())
        things = meta.get("things") if isinstance(meta, dict) else None
        if not isinstance(things, list) or not all(isinstance(t, int) for t in things):
            things = list(range(scenes.num_classes))
        super().__init__(scenes, things, min_area)
