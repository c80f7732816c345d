"""The synthetic counterpart of a classification set: each scene labelled by its dominant object.

A scene's label is the thing class (shape + texture) covering the most pixels of its exact
label map (:mod:`densessl.data.scenes.dataset`); ties go to the lower class id. Scenes
without any thing pixel are left out of the split. Labels are computed exactly from the
rendered masks, so a backbone that sees which object dominates scores 100 %.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.data.segmentation.scene_folder import SceneFolder
from densessl.io.paths import user_path

__all__ = ["SceneFolderClasses", "SyntheticSceneClasses", "dominant_class"]


def dominant_class(label: torch.Tensor, things: list[int]) -> int | None:
    """Index into ``things`` of the class with the most pixels in ``label`` (None: none)."""
    counts = torch.bincount(label.flatten().long(), minlength=256)[torch.tensor(things)]
    return None if int(counts.max()) == 0 else int(counts.argmax())


class _DominantClass(Dataset):
    """Items ``{"image", "label": int, "index"}`` of a segmentation set's scenes."""

    def __init__(self, scenes: Dataset, things: list[int], names: list[str]) -> None:
        self.scenes = scenes
        self.class_names = [names[t] for t in things]
        self.num_classes = len(things)
        self.items: list[tuple[int, int]] = []
        for i in range(len(scenes)):  # type: ignore[arg-type]
            label = dominant_class(scenes[i]["label"], things)
            if label is not None:
                self.items.append((i, label))
        self.dropped = len(scenes) - len(self.items)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j, label = self.items[i]
        item = self.scenes[j]
        return {"image": item["image"], "label": label, "index": item["index"]}


class SyntheticSceneClasses(_DominantClass):
    """Scenes rendered on the fly, labelled by their dominant object class.

    Args:
        split / num_images / size / seed / val_fraction / class_set / colours / objects /
        radius: as
            :class:`~densessl.data.scenes.dataset.SyntheticScenes` (train and val hold
            disjoint scenes).
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 500,
        size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.2,
        class_set: str | None = None,
        colours: str | None = None,
        objects: Sequence[int] | None = None,
        radius: Sequence[float] | None = None,
    ) -> None:
        scene = {"class_set": class_set, "colours": colours, "objects": objects, "radius": radius}
        scenes = SyntheticScenes(num_images, size, seed, split, val_fraction=val_fraction, **scene)
        s = scenes.config.num_stuff_classes
        super().__init__(scenes, list(range(s, scenes.num_classes)), list(scenes.class_names))


class SceneFolderClasses(_DominantClass):
    """A ``densessl scenes`` folder, labelled by each scene's dominant object class (the
    thing ids of its ``classes.json``; all classes when it lists none)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        scenes = SceneFolder(root, split)
        meta = json.loads((user_path(root) / "classes.json").read_text())
        things = meta.get("things") if isinstance(meta, dict) else None
        if not isinstance(things, list) or not all(isinstance(t, int) for t in things):
            things = list(range(scenes.num_classes))
        super().__init__(scenes, things, list(scenes.class_names))
