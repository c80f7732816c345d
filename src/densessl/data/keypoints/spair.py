"""SPair-71k keypoint pairs, in the published layout.

Min et al., "SPair-71k: A Large-scale Benchmark for Semantic Correspondence" (arXiv
1908.10543); the layout its toolkit and Probe3D (mbanani/probe3d, evals/datasets/spair.py)
read::

    ROOT/Layout/large/<split>.txt or ROOT/ImagePairs/<split>.txt   pair names, one a line
                                      (``000001-2008_000585-2008_005470:aeroplane``)
    ROOT/PairAnnotation/<split>/<pair name>.json   src_imname, trg_imname, category,
                                      src_kps, trg_kps ([[x, y], ...], the keypoints visible
                                      in both), trg_bndbox [x1, y1, x2, y2], src/trg_imsize,
                                      viewpoint_variation, ...
    ROOT/JPEGImages/<category>/<imname>.jpg

Splits: ``test`` (12,234 pairs, 18 categories, the one papers score), ``val``, ``trn``
(``train`` is accepted for ``trn``). When the list file is missing, every JSON of
``PairAnnotation/<split>/`` is used, sorted.

Item ``i``: ``{"name", "category", "source", "target": uint8 [3, H, W] RGB, "source_kps",
"target_kps": float [K, 2] (x, y) pixels, "bbox": float [4] the target object's box
(x1, y1, x2, y2), "viewpoint_variation": int, "index": i}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densessl.data.segmentation.files import load_image, require_paths
from densessl.errors import DataError
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = ["SPairPairs"]

LAYOUT = (
    "the SPair-71k layout ROOT/PairAnnotation/<split>/<pair>.json (listed in "
    "ROOT/ImagePairs/<split>.txt or ROOT/Layout/large/<split>.txt), "
    "ROOT/JPEGImages/<category>/<image>.jpg"
)
_SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}
_KEYS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")


class SPairPairs(Dataset):
    """SPair-71k image pairs with their corresponding keypoints.

    Args:
        root: the SPair-71k folder.
        split: ``test`` (default, as every paper), ``val`` or ``trn``/``train``.
        categories: keep only these categories (default: all).

    Raises:
        FileNotFoundError: missing annotations or images, naming the layout.
        DataError: an annotation without the keys above, or with mismatched keypoints.
    """

    def __init__(
        self, root: str | Path, split: str = "test", categories: list[str] | None = None
    ) -> None:
        self.root = user_path(root)
        if split not in _SPLITS:
            raise DataError(f"SPair-71k split must be one of {', '.join(_SPLITS)}, got {split!r}")
        self.split = _SPLITS[split]
        folder = self.root / "PairAnnotation" / self.split
        require_paths(LAYOUT, [folder, self.root / "JPEGImages"], self.root)
        lists = [
            self.root / "ImagePairs" / f"{self.split}.txt",
            self.root / "Layout" / "large" / f"{self.split}.txt",
        ]
        listed = next((p for p in lists if p.is_file()), None)
        if listed is not None:
            names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
            files = [folder / f"{n}.json" for n in names]
            require_paths(LAYOUT, files, self.root)
        else:
            files = sorted(folder.glob("*.json"))
            if not files:
                raise FileNotFoundError(f"expected {LAYOUT}; no pair annotations in {folder}")
        self.pairs = [self._read(f) for f in files]
        if categories is not None:
            self.pairs = [p for p in self.pairs if p["category"] in set(categories)]
        self.categories = sorted({p["category"] for p in self.pairs})

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            ann = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {display_path(path)}: {err}") from err
        missing = [k for k in _KEYS if k not in ann]
        if missing:
            raise DataError(f"{display_path(path)} lacks {', '.join(missing)} ({LAYOUT})")
        if len(ann["src_kps"]) != len(ann["trg_kps"]) or not ann["src_kps"]:
            raise DataError(f"{display_path(path)}: src_kps and trg_kps must pair up, non-empty")
        cat = ann["category"]
        images = [self.root / "JPEGImages" / cat / ann[k] for k in ("src_imname", "trg_imname")]
        require_paths(LAYOUT, images, self.root)
        return {
            "name": path.stem,
            "category": cat,
            "paths": images,
            "source_kps": torch.tensor(ann["src_kps"], dtype=torch.float32).reshape(-1, 2),
            "target_kps": torch.tensor(ann["trg_kps"], dtype=torch.float32).reshape(-1, 2),
            "bbox": torch.tensor(ann["trg_bndbox"], dtype=torch.float32).reshape(4),
            "viewpoint_variation": int(ann.get("viewpoint_variation", -1)),
        }

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        source, target = (load_image(p) for p in pair["paths"])
        out = {k: v for k, v in pair.items() if k != "paths"}
        return {**out, "source": source, "target": target, "index": index}
