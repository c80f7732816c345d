"""Synthetic keypoint pairs: two views of one scene with exact correspondences.

Pair ``i`` renders scene ``i`` (:func:`densessl.data.scenes.render.render_scene`) at 1.5x the
view size, then takes two square crops (side 60-90 % of the scene, random position, each
flipped horizontally with p = 0.5) resized to ``size`` (bilinear, antialiased). The object
of the pair is the largest connected region of one thing class inside both crops
(``category`` = its class name, as SPair's one category per pair); ``num_keypoints`` pixels
of it are drawn at random and mapped into both views through the known crop, scale and
flip, so every correspondence is exact to floating point. ``bbox`` is the object's box in
the target view (its part inside both crops). Pixel centres are at ``+0.5``: scene
point ``X`` is at ``(X - x0) * size / side`` in a crop starting at ``x0``, mirrored to
``size - u`` when flipped.

Pair ``i`` of seed ``s`` is a pure function of ``(s, i, arguments)``; items are
:class:`~densessl.data.keypoints.spair.SPairPairs`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from densessl.data.scenes.render import IGNORE_INDEX, SceneConfig, class_names, render_scene
from densessl.errors import DataError

__all__ = ["SyntheticPairs", "SyntheticPairsFolder"]


def _view(image: torch.Tensor, box: tuple[int, int, int], flip: bool, size: int) -> torch.Tensor:
    x0, y0, side = box
    crop = image[:, y0 : y0 + side, x0 : x0 + side].float()[None]
    out = F.interpolate(
        crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    out = out.flip(-1) if flip else out
    return out.round().clamp(0, 255).to(torch.uint8)


def _to_view(xy: np.ndarray, box: tuple[int, int, int], flip: bool, size: int) -> np.ndarray:
    x0, y0, side = box
    uv = (xy - np.array([x0, y0], np.float64)) * (size / side)
    if flip:
        uv[:, 0] = size - uv[:, 0]
    return uv


class SyntheticPairs(Dataset):
    """Pairs of views of synthetic scenes (the ``scenes`` layout of the keypoint-pair kind).

    Args:
        split: ``"test"``/``"val"`` (scenes of ``seed + 1``) or ``"train"`` (of ``seed``).
        num_pairs: pairs in the split.
        size: side of each view in pixels.
        num_keypoints: keypoints per pair (fewer when the object is smaller).
        seed: scene seed.
        class_set / colours: the scenes' thing classes and colour mode, as
            :class:`~densessl.data.scenes.render.SceneConfig`'s (the category names follow
            the class set).
    """

    def __init__(
        self,
        split: str = "test",
        num_pairs: int = 24,
        size: int = 96,
        num_keypoints: int = 8,
        seed: int = 0,
        class_set: str = "shared-cues",
        colours: str = "instance",
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        for name, value, low in (
            ("num_pairs", num_pairs, 1),
            ("size", size, 32),
            ("num_keypoints", num_keypoints, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if size > 340:
            raise ValueError(f"size must be <= 340 (the scene is 1.5x it), got {size}")
        self.num_pairs, self.size, self.num_keypoints = num_pairs, size, num_keypoints
        self.image_size = size
        self.seed = seed + (0 if split == "train" else 1)
        scene = {"class_set": class_set, "colours": colours}
        self.config = SceneConfig(size=round(size * 1.5), min_objects=2, max_objects=4, **scene)
        self.names = class_names(self.config)

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        image, label = render_scene(index, self.seed, self.config)
        rng = np.random.default_rng([self.seed, index, 11])
        base = self.config.size
        for _ in range(20):
            sides = rng.integers(int(0.6 * base), int(0.9 * base) + 1, 2)
            boxes = [
                (int(rng.integers(0, base - s + 1)), int(rng.integers(0, base - s + 1)), int(s))
                for s in sides
            ]
            flips = [bool(rng.random() < 0.5) for _ in range(2)]
            inside = np.ones_like(label, bool)
            for x0, y0, s in boxes:
                box = np.zeros_like(inside)
                box[y0 : y0 + s, x0 : x0 + s] = True
                inside &= box
            things = (label >= self.config.num_stuff_classes) & (label != IGNORE_INDEX) & inside
            best = None
            for cls in np.unique(label[things]):
                regions, count = ndimage.label(things & (label == cls))
                sizes = np.bincount(regions.ravel())[1:]
                k = int(sizes.argmax()) if count else -1
                if count and (best is None or sizes[k] > best[0]):
                    best = (int(sizes[k]), int(cls), regions == k + 1)
            if best is not None and best[0] >= 4:
                break
        else:
            raise RuntimeError(f"scene {index} has no object visible in both views")
        _, cls, region = best
        ys, xs = np.nonzero(region)
        pick = rng.choice(len(xs), size=min(self.num_keypoints, len(xs)), replace=False)
        points = np.stack([xs[pick], ys[pick]], 1).astype(np.float64) + 0.5
        tensor = torch.from_numpy(image).permute(2, 0, 1)
        corners = np.array([[xs.min(), ys.min()], [xs.max() + 1.0, ys.max() + 1.0]], np.float64)
        box_uv = _to_view(corners, boxes[1], flips[1], self.size)
        bbox = [box_uv[:, 0].min(), box_uv[:, 1].min(), box_uv[:, 0].max(), box_uv[:, 1].max()]
        return {
            "name": f"pair{index:05d}",
            "category": self.names[cls],
            "source": _view(tensor, boxes[0], flips[0], self.size),
            "target": _view(tensor, boxes[1], flips[1], self.size),
            "source_kps": torch.from_numpy(_to_view(points, boxes[0], flips[0], self.size)).float(),
            "target_kps": torch.from_numpy(_to_view(points, boxes[1], flips[1], self.size)).float(),
            "bbox": torch.tensor(bbox, dtype=torch.float32),
            "viewpoint_variation": int(flips[0] != flips[1]),
            "index": index,
            "views": {"boxes": boxes, "flips": flips, "scene_size": base},
        }


class SyntheticPairsFolder(SyntheticPairs):
    """``--dataset scenes --root DIR`` for keypoint pairs: refused, they exist only in memory."""

    def __init__(self, root: object, split: str = "test", **options: Any) -> None:
        raise DataError(
            "the synthetic keypoint pairs are rendered in memory: drop --root (a `densessl "
            "scenes` folder holds single images, not pairs)"
        )
