"""DAVIS-2017 semi-supervised video object segmentation, in its published layout.

Pont-Tuset et al., "The 2017 DAVIS Challenge on Video Object Segmentation" (arXiv 1704.00675);
the layout read by davisvideochallenge/davis2017-evaluation (davis2017/davis.py) and by DINO's
eval_video_segmentation.py::

    ROOT/ImageSets/2017/val.txt             one sequence name per line (val: 30 sequences)
    ROOT/JPEGImages/480p/<seq>/00000.jpg    frames, sorted by name
    ROOT/Annotations/480p/<seq>/00000.png   palette PNGs of object ids (0 = background,
                                            1..K objects, 255 = void), one per frame

Item ``i`` is one sequence: ``{"name": str, "frames": uint8 [T, 3, H, W] RGB,
"masks": uint8 [T, H, W] raw object ids, "frame_names": [str], "index": i}``. The palette is
never applied: the PNG indices are the object ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from densessl.data.segmentation.files import (
    load_image,
    read_label_png,
    read_split_file,
    require_paths,
)
from densessl.errors import DataError
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = ["DAVISVideos"]

LAYOUT = (
    "the DAVIS-2017 layout ROOT/ImageSets/2017/<split>.txt, "
    "ROOT/JPEGImages/<resolution>/<seq>/*.jpg, ROOT/Annotations/<resolution>/<seq>/*.png"
)


class DAVISVideos(Dataset):
    """DAVIS-2017 sequences with their per-frame object masks.

    Args:
        root: the DAVIS folder (holding ``JPEGImages``, ``Annotations``, ``ImageSets``).
        split: the sequence list ``ImageSets/2017/<split>.txt`` (``val``: the 30 sequences
            every paper scores; ``train``: 60).
        resolution: the frame folder (``480p``, as DINO and the papers; or
            ``Full-Resolution``).
        sequences: score only these sequences (default: every one in the list).

    Raises:
        FileNotFoundError: a missing list, folder, frame or annotation, naming the layout.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resolution: str = "480p",
        sequences: Sequence[str] | None = None,
    ) -> None:
        self.root = user_path(root)
        self.split, self.resolution = split, resolution
        listing = self.root / "ImageSets" / "2017" / f"{split}.txt"
        frames_dir = self.root / "JPEGImages" / resolution
        masks_dir = self.root / "Annotations" / resolution
        require_paths(LAYOUT, [listing, frames_dir, masks_dir], self.root)
        names = read_split_file(listing)
        if sequences is not None:
            unknown = [s for s in sequences if s not in names]
            if unknown:
                raise DataError(
                    f"sequences {', '.join(map(display_path, unknown))} are not in "
                    f"{display_path(listing)}"
                )
            names = [s for s in names if s in set(sequences)]
        self.sequences: list[tuple[str, list[Path], list[Path]]] = []
        for name in names:
            require_paths(LAYOUT, [frames_dir / name, masks_dir / name], self.root)
            frames = sorted(frames_dir.joinpath(name).glob("*.jpg"))
            if not frames:
                raise FileNotFoundError(
                    f"expected {LAYOUT}; no frames in ROOT/JPEGImages/{resolution}/{name}"
                )
            masks = [masks_dir / name / (f.stem + ".png") for f in frames]
            require_paths(LAYOUT, masks, self.root)
            self.sequences.append((name, frames, masks))

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def names(self) -> list[str]:
        """The sequence names, in list order."""
        return [name for name, _, _ in self.sequences]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, frame_paths, mask_paths = self.sequences[index]
        frames = [load_image(p) for p in frame_paths]
        masks = [read_label_png(p) for p in mask_paths]
        shape = tuple(frames[0].shape)
        for path, frame, mask, mpath in zip(frame_paths, frames, masks, mask_paths, strict=True):
            if tuple(frame.shape) != shape:
                raise DataError(
                    f"{display_path(path)} is {tuple(frame.shape[1:])}, the sequence's first "
                    f"frame {shape[1:]}: frames of one sequence must share a size"
                )
            if mask.shape != tuple(frame.shape[1:]):
                raise DataError(
                    f"{display_path(mpath)} is {mask.shape}, its frame {display_path(path)} "
                    f"{tuple(frame.shape[1:])}"
                )
        return {
            "name": name,
            "frames": torch.stack(frames),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
            "frame_names": [p.stem for p in frame_paths],
            "index": index,
        }
