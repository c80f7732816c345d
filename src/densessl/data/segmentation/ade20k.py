"""ADE20K scene parsing (ADEChallengeData2016, 150 classes).

Layout (the ``ADEChallengeData2016.zip`` archive; ``root`` may be the folder holding it)::

    ROOT/images/{training,validation}/*.jpg
    ROOT/annotations/{training,validation}/*.png     grayscale, 0 = "other", 1-150 = classes

Annotation 0 ("other objects" / unlabelled) becomes 255, classes 1-150 become 0-149: the
standard 150-class protocol (mmseg's ``reduce_zero_label``; open-hummingbird-eval and NeCo
use ADEChallenge this way).

Note: Leopart's own "ADE20K" numbers are a different task: 111 object-*part* classes on the
street-scene subset of the ADE20K 2021 index, used for overclustering (MkuuWaUjinga/leopart
@7835701 ``data/ade20k/ade20kdata.py`` ``Ade20KPartsDataset``,
``experiments/overcluster/configs/ade20k-street/``). This class does not reproduce that label set.
"""

from __future__ import annotations

import os
from pathlib import Path

from densessl.data.segmentation.files import (
    IGNORE_INDEX,
    SegmentationFiles,
    check_files_exist,
    lookup_table,
    require_paths,
)
from densessl.errors import brief
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = ["ADE20K", "ADE20K_CLASSES"]

#: The 150 class names in id order (ids 1-150 → classes 0-149; objectInfo150 short names).
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

_SPLITS = ("training", "validation")


class ADE20K(SegmentationFiles):
    """ADEChallengeData2016 semantic segmentation: 150 classes, "other" (0) → 255.

    Args:
        root: ``ADEChallengeData2016`` folder (or its parent).
        split: ``"training"`` (20,210 images) or ``"validation"`` (2,000); ``"train"`` and
            ``"val"`` are accepted as aliases.
        size_mismatch: ``"error"`` (default) or ``"resize"``.

    Raises:
        FileNotFoundError: A folder, image or annotation is missing.
        ValueError: (when loading an item) annotation ids above 150, a non single-channel
            PNG, or an image/annotation size mismatch.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "training",
        size_mismatch: str = "error",
    ) -> None:
        split = {"train": "training", "val": "validation"}.get(split, split)
        if split not in _SPLITS:
            raise ValueError(f"split must be 'training' or 'validation', got {brief(split)}")
        root_path = user_path(root)
        if not (root_path / "images").is_dir() and (root_path / "ADEChallengeData2016").is_dir():
            root_path = root_path / "ADEChallengeData2016"
        image_dir = root_path / "images" / split
        label_dir = root_path / "annotations" / split
        layout = (
            f"ADEChallengeData2016 layout: ROOT/images/{split}/*.jpg, "
            f"ROOT/annotations/{split}/*.png"
        )
        require_paths(layout, [image_dir, label_dir], root_path)
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".jpg"))
        if not names:
            raise FileNotFoundError(
                f"expected {layout}; no *.jpg images in {display_path(image_dir)}"
            )
        stems = [Path(n).stem for n in names]
        check_files_exist(label_dir, [s + ".png" for s in stems], "annotations", layout)
        mapping = {0: IGNORE_INDEX, **{k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}}
        super().__init__(
            [image_dir / n for n in names],
            [label_dir / (s + ".png") for s in stems],
            ADE20K_CLASSES,
            lookup_table(mapping),
            name=f"ADE20K {split}",
            size_mismatch=size_mismatch,
        )
        self.root, self.split, self.stems = root_path, split, stems
