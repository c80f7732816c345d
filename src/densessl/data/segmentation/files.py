"""The machinery every labeled segmentation layout shares (the layouts are its siblings).

Every labeled dataset in densessl yields items ``{"image": uint8 [3, H, W] RGB,
"label": uint8 [H, W], "index": int}`` and carries ``num_classes``, ``class_names`` and
``ignore_index`` (always 255). Images may differ in size; the evaluators resize per item
(:mod:`densessl.evaluation.preprocess`).

The layouts live in their own modules, chosen by name through :mod:`.registry`:

* :class:`~densessl.data.segmentation.scene_folder.SceneFolder`: a folder written by
  ``densessl scenes``.

* :class:`~densessl.data.segmentation.voc.VOCSegmentation`: Pascal VOC 2012 (+ SBD
  ``trainaug``), 21 classes.
* :class:`~densessl.data.segmentation.coco.COCOStuff` /
  :class:`~densessl.data.segmentation.coco.COCOThings`: Leopart's coarse COCO-Stuff (15 stuff
  super-categories) and COCO-Things (12 thing super-categories).
* :class:`~densessl.data.segmentation.ade20k.ADE20K`: ADEChallengeData2016, 150 classes.

Conventions shared by all of them (:class:`SegmentationFiles`):

* Label PNGs hold **raw indices** (palette or grayscale PNG; the palette is never applied).
  A lookup table maps raw ids to classes ``0 .. C-1`` or 255. A raw id the table does not
  know raises ``ValueError`` naming the file and the ids, so a wrong folder or format fails
  loudly instead of training on garbage. RGB (colour-coded) label PNGs are refused.
* Image and label must have the same size. By default a mismatch raises ``ValueError``
  naming both files (``size_mismatch="resize"`` resizes the label, nearest, with a warning).
* Images are decoded in their **stored pixel orientation**: label maps are stored that way
  and Leopart/torchvision decode without EXIF rotation, so a JPEG carrying an EXIF
  orientation tag is decoded without applying it (all other images go through
  :func:`densessl.io.decode.load_rgb`).
* Missing folders, split lists or files raise ``FileNotFoundError`` stating the expected
  layout and exactly what is missing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from densessl.errors import DataError, brief
from densessl.io.decode import ImageDecodeError, display_path, load_rgb

IGNORE_INDEX = 255

# ----------------------------------------------------------------------------- helpers
def require_paths(layout: str, paths: Sequence[Path], root: Path | None = None) -> None:
    """Raise ``FileNotFoundError`` if any path is missing.

    Args:
        layout: Human-readable description of the expected layout (``ROOT/...`` patterns).
        paths: Paths that must exist (files or folders).
        root: Shown as ``ROOT`` in the message.

    Raises:
        FileNotFoundError: ``"expected <layout>; missing: <paths>"`` (ROOT = the root).
    """
    missing = [p for p in paths if not p.exists()]
    if missing:
        where = f" (ROOT = {display_path(root)})" if root is not None else ""
        raise FileNotFoundError(
            f"expected {layout}{where}; missing: {', '.join(_show(p, root) for p in missing)}"
        )


def _show(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return "ROOT/" + display_path(path.relative_to(root).as_posix())
        except ValueError:
            pass
    return display_path(path)


def read_split_file(path: Path) -> list[str]:
    """Stems listed in a split file, one per line, in order.

    Blank lines and ``#`` comments are skipped. A line may also be a path or a pair of paths
    (the DeepLab ``train_aug.txt`` style ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``):
    the stem of its first token is used.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file lists nothing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {display_path(path)}")
    stems = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            stems.append(Path(line.split()[0]).stem)
    if not stems:
        raise ValueError(f"split file {display_path(path)} lists no images")
    return stems


def check_files_exist(folder: Path, names: Sequence[str], what: str, layout: str) -> None:
    """Raise ``FileNotFoundError`` naming the first missing ``folder/name`` entries."""
    present = set(os.listdir(folder))
    missing = [n for n in names if n not in present]
    if missing:
        shown = ", ".join(display_path(folder / n) for n in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"expected {layout}; {len(missing)} {what} missing: {shown}{more}")


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Raw-id lookup table: ``table[raw] = class`` (or 255); unknown ids are ``-1``."""
    table = np.full(size, -1, dtype=np.int16)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def _exif_orientation(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1  # load_rgb reports unreadable files properly


def load_image(path: Path) -> torch.Tensor:
    """Decode an image as uint8 ``[3, H, W]`` RGB in its stored pixel orientation.

    Raises:
        ImageDecodeError: The file cannot be decoded (the message names it).
    """
    if _exif_orientation(path) == 1:
        return load_rgb(path)
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise ImageDecodeError(path, f"{type(e).__name__}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_label_png(path: Path) -> np.ndarray:
    """Raw label indices ``[H, W]`` of a palette / grayscale / 16-bit PNG (palette not applied).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is unreadable or not single-channel (e.g. a colour-coded RGB
            label image), naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {display_path(path)}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except Exception as e:
        raise DataError(
            f"cannot read label file {display_path(path)}: {type(e).__name__}: {e}"
        ) from e
    if arr.ndim != 2:
        raise DataError(
            f"label file {display_path(path)} has mode {mode!r} and shape {arr.shape}: expected a "
            "single-channel PNG of class indices (palette 'P' or grayscale 'L'), not colours"
        )
    return arr


# ----------------------------------------------------------------------------- base class
class SegmentationFiles(Dataset):
    """Image / label-PNG pairs with a raw-id → class lookup table (base of the real datasets).

    Args:
        images: Image files, one per item.
        labels: Label PNGs (raw ids), same order.
        class_names: ``C`` class names; classes are ``0 .. C-1``.
        table: int16 lookup table from raw id to class or 255 (``-1``: invalid id).
        name: Dataset name used in error messages.
        size_mismatch: ``"error"`` (default) or ``"resize"`` (nearest, with a warning).

    Attributes:
        num_classes / class_names / ignore_index: the labeled-dataset contract.
        image_paths / label_paths: the files.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        images: Sequence[Path],
        labels: Sequence[Path],
        class_names: Sequence[str],
        table: np.ndarray,
        name: str,
        size_mismatch: str = "error",
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label files")
        if size_mismatch not in ("error", "resize"):
            raise ValueError(
                f"size_mismatch must be 'error' or 'resize', got {brief(size_mismatch)}"
            )
        self.image_paths = [Path(p) for p in images]
        self.label_paths = [Path(p) for p in labels]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.table = np.asarray(table, dtype=np.int16)
        self.name = name
        self.size_mismatch = size_mismatch

    def __len__(self) -> int:
        return len(self.image_paths)

    def map_label(self, raw: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
        """Map raw ids through the lookup table; uint8 classes / 255 out.

        Raises:
            ValueError: Some raw id is unknown to this dataset (the message names the file,
                the ids and the valid range).
        """
        raw = np.asarray(raw)
        if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0)):
            raise DataError(
                f"{self.name} label {display_path(path)} holds non-index values ({raw.dtype})"
            )
        big = raw >= len(self.table)
        mapped = self.table[np.where(big, 0, raw)]
        bad = big | (mapped < 0)
        if bad.any():
            ids = sorted({int(v) for v in np.unique(raw[bad])})
            raise DataError(
                f"{self.name} label {display_path(path)} holds ids {ids[:10]} outside the "
                f"known range ({self.valid_ids_text()})"
            )
        return mapped.astype(np.uint8)

    def valid_ids_text(self) -> str:
        """Short description of the raw ids the table accepts (for error messages)."""
        ok = np.flatnonzero(self.table >= 0)
        return f"valid raw ids: {_ranges(ok)}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_path, label_path = self.image_paths[i], self.label_paths[i]  # IndexError past end
        i = i % len(self)
        image = load_image(image_path)
        raw = read_label_png(label_path)
        label = torch.from_numpy(self.map_label(raw, label_path))
        if tuple(label.shape) != tuple(image.shape[1:]):
            msg = (
                f"{self.name}: label {display_path(label_path)} is {tuple(label.shape)} (H, W) "
                f"but image {display_path(image_path)} is {tuple(image.shape[1:])}"
            )
            if self.size_mismatch == "error":
                raise DataError(msg)
            warnings.warn(msg + "; label resized (nearest)", stacklevel=2)
            label = torch.nn.functional.interpolate(
                label[None, None].float(), size=tuple(image.shape[1:]), mode="nearest"
            )[0, 0].to(torch.uint8)
        return {"image": image, "label": label, "index": i}


def _ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 5, 255]`` → ``"0-2, 5, 255"``."""
    if values.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts, ends = values[np.r_[0, breaks + 1]], values[np.r_[breaks, values.size - 1]]
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends, strict=True))
