"""A synthetic-scenes folder written by ``densessl scenes`` as a labeled dataset.

See :func:`densessl.data.scenes.dataset.write_scenes` for how the folder is made and
:mod:`densessl.data.segmentation.files` for the conventions every labeled dataset follows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from densessl.data.segmentation.files import (
    IGNORE_INDEX,
    SegmentationFiles,
    check_files_exist,
    lookup_table,
    read_split_file,
    require_paths,
)
from densessl.errors import brief
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = ["SceneFolder"]


class SceneFolder(SegmentationFiles):
    """A synthetic-scenes folder written by :func:`densessl.data.scenes.dataset.write_scenes`.

    Layout::

        ROOT/images/<stem>.png        RGB
        ROOT/labels/<stem>.png        class ids (mode "L"), 255 = ignore
        ROOT/splits/train.txt, val.txt   one stem per line
        ROOT/classes.json             class names (key "class_names", or "classes" as a list
                                      of names or of {"name": ...} dicts, or "names")

    Args:
        root: The scenes folder.
        split: ``"train"``, ``"val"`` or ``"all"`` (train then val).
        size_mismatch: See :class:`SegmentationFiles`.
    """

    LAYOUT = (
        "scenes folder layout: ROOT/images/*.png, ROOT/labels/*.png, "
        "ROOT/splits/{train,val}.txt, ROOT/classes.json"
    )

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", size_mismatch: str = "error"
    ) -> None:
        root = user_path(root)
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {brief(split)}")
        splits = ("train", "val") if split == "all" else (split,)
        split_files = [root / "splits" / f"{s}.txt" for s in splits]
        require_paths(
            self.LAYOUT,
            [root / "images", root / "labels", *split_files, root / "classes.json"],
            root,
        )
        names = _scene_class_names(root / "classes.json")
        stems = [stem for f in split_files for stem in read_split_file(f)]
        for sub in ("images", "labels"):
            check_files_exist(root / sub, [f"{s}.png" for s in stems], sub, self.LAYOUT)
        table = lookup_table({**{c: c for c in range(len(names))}, IGNORE_INDEX: IGNORE_INDEX})
        super().__init__(
            [root / "images" / f"{s}.png" for s in stems],
            [root / "labels" / f"{s}.png" for s in stems],
            names,
            table,
            name="scenes",
            size_mismatch=size_mismatch,
        )
        self.root, self.split, self.stems = root, split, stems


def _scene_class_names(path: Path) -> list[str]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {display_path(path)}: {e}") from e
    names: Any = None
    if isinstance(meta, dict):
        for key in ("class_names", "classes", "names"):
            if isinstance(meta.get(key), list) and meta[key]:
                names = meta[key]
                break
    elif isinstance(meta, list):
        names = meta
    if names is not None:
        names = [n.get("name") if isinstance(n, dict) else n for n in names]
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{display_path(path)} holds no class names: expected a list under 'class_names', "
            "'classes' (names or {'name': ...} dicts) or 'names'"
        )
    if len(names) >= IGNORE_INDEX:
        raise ValueError(
            f"{display_path(path)}: {len(names)} classes; at most 255 fit beside ignore id 255"
        )
    return names
