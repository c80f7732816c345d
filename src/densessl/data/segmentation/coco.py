"""Leopart's coarse COCO label sets: COCO-Stuff (15 stuff super-categories) and COCO-Things
(12 thing super-categories).

Provenance: Leopart (MkuuWaUjinga/leopart @7835701) ``data/coco/coco_data_module.py`` builds
both label sets from the ``categories`` of the COCO json files: the **super-categories sorted
alphabetically** give the class ids. The category tables below restate those facts (ids,
names and super-categories of the COCO 2017 / COCO-Stuff category lists), so no json is
needed at load time.

* **COCO-Stuff (coarse)**: the 91 stuff categories (ids 92-182) fold into 15
  super-categories. "other" (183, all thing pixels in the stuff annotations), unlabelled (0)
  and thing ids (1-91) become 255. ``coarse=False`` keeps the 91 stuff classes (92-182 →
  0-90) instead.
* **COCO-Things**: the 80 thing categories (ids 1-90) fold into 12 super-categories; stuff
  (92-200 in the panoptic list, incl. the "-merged" classes 184-200) and unlabelled (0) → 255.

Layouts (``layout="auto"`` picks the first that exists):

**Leopart** (``layout="leopart"``; Leopart's ``data_dir``)::

    ROOT/coco/images/{train,val}2017/*.jpg
    ROOT/annotations/annotations/stuff_annotations/stuff_{train,val}2017_pixelmaps/*.png
        (COCO-Stuff: the stuff_trainval2017 pixel maps; raw category ids 0, 92-183)
    ROOT/annotations/panoptic_annotations/semantic_segmentation_{train,val}2017/*.png
        (COCO-Things: panoptic PNGs converted by panopticapi's
        converters/panoptic2semantic_segmentation.py; raw category ids, 0 = unlabelled)

**cocostuff** (``layout="cocostuff"``; nightrome/cocostuff README setup)::

    ROOT/images/{train,val}2017/*.jpg
    ROOT/annotations/{train,val}2017/*.png     stuffthingmaps: id - 1 (0-181), 255 = unlabelled

Things from the stuffthingmaps are not pixel-identical to the panoptic PNGs (panoptic
resolves overlaps differently), so use the Leopart layout for Leopart parity.

Image lists: every ``*.jpg`` of the image folder, sorted (Leopart lists the folder), or
``files=``. Leopart trains the COCO linear probe on an *unseeded* random 10% of train2017;
``fraction=0.1, subset_seed=s`` draws a seeded 10%.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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

__all__ = [
    "STUFF_CATEGORIES",
    "STUFF_SUPERCATEGORIES",
    "THING_CATEGORIES",
    "THING_SUPERCATEGORIES",
    "COCOStuff",
    "COCOThings",
]

#: COCO thing categories ``{supercategory: {id: name}}`` (instances / panoptic json, 80 ids).
THING_CATEGORIES: dict[str, dict[int, str]] = {
    "person": {1: "person"},
    "vehicle": {2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
                8: "truck", 9: "boat"},
    "outdoor": {10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter",
                15: "bench"},
    "animal": {16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow",
               22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe"},
    "accessory": {27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase"},
    "sports": {34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite",
               39: "baseball bat", 40: "baseball glove", 41: "skateboard", 42: "surfboard",
               43: "tennis racket"},
    "kitchen": {44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon",
                51: "bowl"},
    "food": {52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
             57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake"},
    "furniture": {62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table",
                  70: "toilet"},
    "electronic": {72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard",
                   77: "cell phone"},
    "appliance": {78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator"},
    "indoor": {84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
               89: "hair drier", 90: "toothbrush"},
}  # fmt: skip

#: COCO-Stuff stuff categories ``{supercategory: {id: name}}`` (stuff json, ids 92-182).
STUFF_CATEGORIES: dict[str, dict[int, str]] = {
    "textile": {92: "banner", 93: "blanket", 104: "cloth", 105: "clothes", 109: "curtain",
                131: "mat", 137: "napkin", 141: "pillow", 152: "rug", 167: "textile-other",
                168: "towel"},
    "plant": {94: "branch", 97: "bush", 119: "flower", 124: "grass", 129: "leaves", 134: "moss",
              142: "plant-other", 163: "straw", 169: "tree"},
    "building": {95: "bridge", 96: "building-other", 128: "house", 151: "roof",
                 158: "skyscraper", 166: "tent"},
    "furniture-stuff": {98: "cabinet", 107: "counter", 108: "cupboard", 110: "desk-stuff",
                        112: "door-stuff", 123: "furniture-other", 130: "light",
                        133: "mirror-stuff", 156: "shelf", 161: "stairs", 165: "table"},
    "structural": {99: "cage", 113: "fence", 138: "net", 146: "railing",
                   164: "structural-other"},
    "raw-material": {100: "cardboard", 132: "metal", 139: "paper", 143: "plastic"},
    "floor": {101: "carpet", 114: "floor-marble", 115: "floor-other", 116: "floor-stone",
              117: "floor-tile", 118: "floor-wood"},
    "ceiling": {102: "ceiling-other", 103: "ceiling-tile"},
    "sky": {106: "clouds", 157: "sky-other"},
    "ground": {111: "dirt", 125: "gravel", 126: "ground-other", 136: "mud", 140: "pavement",
               144: "platform", 145: "playingfield", 147: "railroad", 149: "road", 154: "sand",
               159: "snow"},
    "water": {120: "fog", 148: "river", 155: "sea", 178: "water-other", 179: "waterdrops"},
    "food-stuff": {121: "food-other", 122: "fruit", 153: "salad", 170: "vegetable"},
    "solid": {127: "hill", 135: "mountain", 150: "rock", 160: "solid-other", 162: "stone",
              182: "wood"},
    "wall": {171: "wall-brick", 172: "wall-concrete", 173: "wall-other", 174: "wall-panel",
             175: "wall-stone", 176: "wall-tile", 177: "wall-wood"},
    "window": {180: "window-blind", 181: "window-other"},
}  # fmt: skip

#: Class names of COCO-Things: the 12 thing super-categories, sorted (Leopart's order).
THING_SUPERCATEGORIES: tuple[str, ...] = tuple(sorted(THING_CATEGORIES))
#: Class names of coarse COCO-Stuff: the 15 stuff super-categories ("other" removed), sorted.
STUFF_SUPERCATEGORIES: tuple[str, ...] = tuple(sorted(STUFF_CATEGORIES))

_OTHER_ID = 183  # stuff annotations: every non-stuff pixel
_PANOPTIC_LAST_STUFF_ID = 200  # panoptic stuff ids lie in 92-200 ("-merged" classes 184-200)
_SPLITS = ("train", "val")


def _thing_ids() -> dict[int, int]:
    return {i: THING_SUPERCATEGORIES.index(s) for s, d in THING_CATEGORIES.items() for i in d}


def _stuff_ids(coarse: bool) -> tuple[dict[int, int], list[str]]:
    if coarse:
        ids = {i: STUFF_SUPERCATEGORIES.index(s) for s, d in STUFF_CATEGORIES.items() for i in d}
        return ids, list(STUFF_SUPERCATEGORIES)
    fine = sorted((i, n) for d in STUFF_CATEGORIES.values() for i, n in d.items())
    return {i: c for c, (i, _) in enumerate(fine)}, [n for _, n in fine]


class _COCOBase(SegmentationFiles):
    KIND = ""

    def _setup(
        self,
        root: str | os.PathLike[str],
        split: str,
        layout: str,
        files: Sequence[str] | None,
        fraction: float,
        subset_seed: int,
        size_mismatch: str,
        leopart_labels: str,
        mapping: dict[str, dict[int, int]],
        class_names: Sequence[str],
    ) -> None:
        root_path = user_path(root)
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {brief(split)}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        dirs = {
            "leopart": (
                root_path / "coco" / "images" / f"{split}2017",
                root_path / leopart_labels.format(split=split),
            ),
            "cocostuff": (
                root_path / "images" / f"{split}2017",
                root_path / "annotations" / f"{split}2017",
            ),
        }
        layouts = {
            name: f"{self.KIND} {name} layout: ROOT/{_rel(img, root_path)}/*.jpg, "
            f"ROOT/{_rel(lab, root_path)}/*.png"
            for name, (img, lab) in dirs.items()
        }
        if layout == "auto":
            found = [n for n, (i, lab) in dirs.items() if i.is_dir() and lab.is_dir()]
            if not found:
                raise FileNotFoundError(
                    f"no {self.KIND} data under {display_path(root_path)}: expected "
                    + " or ".join(layouts.values())
                )
            layout = found[0]
        if layout not in dirs:
            raise ValueError(
                f"layout must be 'auto', 'leopart' or 'cocostuff', got {brief(layout)}"
            )
        image_dir, label_dir = dirs[layout]
        require_paths(layouts[layout], [image_dir, label_dir], root_path)
        if files is None:
            names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".jpg"))
        else:
            names = [Path(f).name for f in files]
        if fraction < 1.0:
            rng = np.random.default_rng(subset_seed)
            keep = rng.permutation(len(names))[: max(1, int(len(names) * fraction))]
            names = [names[i] for i in sorted(keep)]
        if not names:
            raise FileNotFoundError(f"no *.jpg images in {display_path(image_dir)}")
        stems = [Path(n).stem for n in names]
        check_files_exist(image_dir, names, "images", layouts[layout])
        check_files_exist(label_dir, [s + ".png" for s in stems], "label files", layouts[layout])
        super().__init__(
            [image_dir / n for n in names],
            [label_dir / (s + ".png") for s in stems],
            class_names,
            lookup_table(mapping[layout]),
            name=f"{self.KIND} {split}",
            size_mismatch=size_mismatch,
        )
        self.root, self.split, self.layout, self.stems = root_path, split, layout, stems


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class COCOStuff(_COCOBase):
    """COCO-Stuff with Leopart's 15 coarse stuff classes (or the 91 fine stuff classes).

    Args:
        root: Dataset folder (see the module docstring for the layouts).
        split: ``"train"`` or ``"val"`` (2017).
        coarse: 15 super-categories (Leopart, default) or the 91 stuff classes.
        layout: ``"auto"``, ``"leopart"`` (stuff pixel maps) or ``"cocostuff"``
            (stuffthingmaps).
        files: Image file names to use (default: every ``*.jpg`` of the image folder).
        fraction: Keep a random fraction of the images (seeded by ``subset_seed``).
        subset_seed: Seed of that subset.
        size_mismatch: ``"error"`` (default) or ``"resize"``.
    """

    KIND = "COCO-Stuff"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        coarse: bool = True,
        layout: str = "auto",
        files: Sequence[str] | None = None,
        fraction: float = 1.0,
        subset_seed: int = 0,
        size_mismatch: str = "error",
    ) -> None:
        stuff, names = _stuff_ids(coarse)
        ignore = {i: IGNORE_INDEX for d in THING_CATEGORIES.values() for i in d}
        pixelmaps = {0: IGNORE_INDEX, **ignore, **stuff, _OTHER_ID: IGNORE_INDEX}
        stuffthing = {i - 1: c for i, c in {**ignore, **stuff}.items()}
        stuffthing[IGNORE_INDEX] = IGNORE_INDEX
        self._setup(
            root, split, layout, files, fraction, subset_seed, size_mismatch,
            "annotations/annotations/stuff_annotations/stuff_{split}2017_pixelmaps",
            {"leopart": pixelmaps, "cocostuff": stuffthing},
            names,
        )  # fmt: skip
        self.coarse = coarse


class COCOThings(_COCOBase):
    """COCO-Things: Leopart's 12 thing super-categories; stuff and unlabelled → 255.

    Args:
        root: Dataset folder (see the module docstring for the layouts).
        split: ``"train"`` or ``"val"`` (2017).
        layout: ``"auto"``, ``"leopart"`` (panoptic semantic PNGs) or ``"cocostuff"``
            (stuffthingmaps).
        files: Image file names to use (default: every ``*.jpg`` of the image folder).
        fraction: Keep a random fraction of the images (seeded by ``subset_seed``).
        subset_seed: Seed of that subset.
        size_mismatch: ``"error"`` (default) or ``"resize"``.
    """

    KIND = "COCO-Things"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        layout: str = "auto",
        files: Sequence[str] | None = None,
        fraction: float = 1.0,
        subset_seed: int = 0,
        size_mismatch: str = "error",
    ) -> None:
        things = _thing_ids()
        panoptic = {0: IGNORE_INDEX, **things}
        panoptic.update({i: IGNORE_INDEX for i in range(92, _PANOPTIC_LAST_STUFF_ID + 1)})
        stuff_ids = [i for d in STUFF_CATEGORIES.values() for i in d]
        stuffthing = {i - 1: c for i, c in things.items()}
        stuffthing.update({i - 1: IGNORE_INDEX for i in stuff_ids})
        stuffthing[IGNORE_INDEX] = IGNORE_INDEX
        self._setup(
            root, split, layout, files, fraction, subset_seed, size_mismatch,
            "annotations/panoptic_annotations/semantic_segmentation_{split}2017",
            {"leopart": panoptic, "cocostuff": stuffthing},
            THING_SUPERCATEGORIES,
        )  # fmt: skip
