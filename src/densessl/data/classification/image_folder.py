"""A class-per-folder image tree (the ImageNet layout DINO's ``eval_knn.py`` reads).

Layout (torchvision ``ImageFolder``, as facebookresearch/dino @7c446df eval_knn.py builds
``ROOT/train`` and ``ROOT/val``)::

    ROOT/train/<class>/<image>.{jpg,jpeg,png,...}
    ROOT/val/<class>/<image>...

Classes are the sub-folder names, sorted (ImageFolder's ``find_classes``), so class ``i``
is the i-th name; files within a class are sorted too, as ImageFolder does. Every split takes
its class list from ``ROOT/train`` when it exists, so a class missing from ``val`` keeps its
index (ImageFolder, reading each split alone, would shift the indices; DINO assumes both
trees hold all 1000 classes). A class folder of ``val`` unknown to ``train`` is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from densessl.data.segmentation.files import require_paths
from densessl.errors import brief
from densessl.io.decode import display_path, load_rgb
from densessl.io.paths import user_path

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

#: torchvision's IMG_EXTENSIONS (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _classes(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


class ImageFolder(Dataset):
    """``ROOT/<split>/<class>/<image>`` as items ``{"image": uint8 [3, H, W], "label": int,
    "index": int}``.

    Args:
        root: the tree holding ``train/`` and ``val/``.
        split: the sub-folder to read (``train``, ``val``, or any other name).

    Raises:
        FileNotFoundError: the split folder is missing or holds no class folder with images
            (the message names the layout expected).
    """

    LAYOUT = "class-per-folder layout (ImageNet): ROOT/{train,val}/<class>/*.jpg"

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        root = user_path(root)
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(f"split must be a folder name, got {brief(split)}")
        folder = root / split
        require_paths(self.LAYOUT, [folder], root)
        train = root / "train"
        names = _classes(train) if train.is_dir() else _classes(folder)
        own = set(_classes(folder))
        if not own:
            raise FileNotFoundError(
                f"expected {self.LAYOUT} (ROOT = {display_path(root)}); "
                f"ROOT/{display_path(split)} holds no class folder"
            )
        unknown = sorted(own - set(names))
        if unknown:
            raise FileNotFoundError(
                f"expected {self.LAYOUT}: class folder ROOT/{display_path(split)}/"
                f"{display_path(unknown[0])} has no counterpart in ROOT/train"
            )
        self.root, self.split = root, split
        self.class_names = names
        self.num_classes = len(names)
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(names):
            if name not in own:
                continue
            files = sorted(
                p for p in (folder / name).iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )  # fmt: skip
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise FileNotFoundError(
                f"expected {self.LAYOUT}; no image ({', '.join(IMAGE_EXTENSIONS)}) under "
                f"ROOT/{display_path(split)}/<class>/ (ROOT = {display_path(root)})"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        return {"image": load_rgb(path), "label": label, "index": i}
