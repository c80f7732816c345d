"""Synthetic videos with exact object masks: the video counterpart of the scenes.

A video is a still background of stuff regions (a scene of
:func:`densessl.data.scenes.render.render_scene` with no objects) and 2-3 textured thing
objects (the scenes' shapes and textures, colours drawn as the scenes' ``colours`` mode)
that translate and rotate at constant speeds, bouncing off the borders, in a fixed depth
order: object ``k`` is painted over objects ``< k``, so their paths cross and they occlude
one another. Masks are the objects' exact geometric coverage (a pixel belongs to the
front-most object whose outline contains its centre), in DAVIS terms: 0 background,
``1..K`` objects. The texture moves with its object (it is drawn in object coordinates);
each frame gets its own pixel noise.

Video ``i`` of seed ``s`` is a pure function of ``(s, i, arguments)``
(``numpy.random.default_rng([s, i, 7])``). Items are :class:`~densessl.data.video.davis.
DAVISVideos`'s: ``{"name", "frames": uint8 [T, 3, H, W], "masks": uint8 [T, H, W],
"frame_names", "index"}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from densessl.data.scenes.render import SceneConfig, region_colours, render_scene
from densessl.data.scenes.shapes import SHAPES
from densessl.data.scenes.textures import THING_TEXTURES
from densessl.errors import DataError

__all__ = ["SyntheticVideos", "SyntheticVideosFolder", "render_video"]

_SHAPES = ("disc", "square", "triangle", "hexagon", "cross", "star")
_TEXTURES = ("stripes", "checker", "dots", "grid", "zigzag", "concentric")


def _objects(
    rng: np.random.Generator, count: int, size: int, colours: str, recolour: np.random.Generator
) -> list[dict]:
    objects = []
    for _ in range(count):
        radius = rng.uniform(0.14, 0.22) * size
        speed = rng.uniform(0.02, 0.05) * size  # px per frame
        angle = rng.uniform(0, 2 * np.pi)
        objects.append(
            {
                "shape": _SHAPES[int(rng.integers(len(_SHAPES)))],
                "texture": _TEXTURES[int(rng.integers(len(_TEXTURES)))],
                "radius": radius,
                "start": rng.uniform(radius, size - radius, 2),
                "velocity": speed * np.array([np.cos(angle), np.sin(angle)]),
                "angle": rng.uniform(0, 2 * np.pi),
                "spin": rng.uniform(-0.08, 0.08),  # rad per frame
                "colours": region_colours(rng, colours, recolour),
                "params": None,
            }
        )
        sample, _ = THING_TEXTURES[objects[-1]["texture"]]
        objects[-1]["params"] = sample(rng)
    return objects


def _position(obj: dict, t: int, size: int) -> np.ndarray:
    """Centre at frame ``t``: straight motion reflected at the borders (a triangle wave)."""
    low, high = obj["radius"] * 0.6, size - obj["radius"] * 0.6
    span = high - low
    p = obj["start"] + obj["velocity"] * t - low
    p = np.mod(p, 2 * span)
    return low + np.where(p > span, 2 * span - p, p)


def render_video(
    index: int,
    seed: int,
    num_frames: int = 8,
    size: int = 96,
    num_objects: int = 3,
    colours: str = "instance",
) -> tuple[np.ndarray, np.ndarray]:
    """Draw video ``index`` of ``seed``; ``colours`` as ``SceneConfig.colours`` (background
    and objects; the layout and motion are the same in every mode).

    Returns:
        frames: uint8 ``[T, H, W, 3]``; masks: uint8 ``[T, H, W]`` object ids (0 = background).
    """
    rng = np.random.default_rng([seed, index, 7])
    noise = np.random.default_rng([seed, index, 8])
    recolour = np.random.default_rng([seed, index, 9])
    config = SceneConfig(
        size=size, min_objects=0, max_objects=0, noise=0.0, blur=0.0, colours=colours
    )
    background, _ = render_scene(index, seed, config)
    objects = _objects(rng, num_objects, size, colours, recolour)
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    x, y = coords.reshape(1, size), coords.reshape(size, 1)
    frames, masks = [], []
    for t in range(num_frames):
        image = background.astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        for k, obj in enumerate(objects, start=1):
            cx, cy = _position(obj, t, size)
            angle = obj["angle"] + obj["spin"] * t
            c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            dx, dy = x - np.float32(cx), y - np.float32(cy)
            lu, lv = c * dx + s * dy, c * dy - s * dx
            sd = SHAPES[obj["shape"]](lu, lv, obj["radius"])
            _, render = THING_TEXTURES[obj["texture"]]
            scale = np.float32(1.0 / size)
            mix = render(lu * scale, lv * scale, obj["params"], 1.0 / size, noise)
            c0, c1 = obj["colours"]
            colour = c0 + mix[..., None] * (c1 - c0)
            cover = np.clip(np.float32(0.5) - sd, 0.0, 1.0)[..., None]
            image += cover * (colour - image)
            mask[sd < 0] = k
        shape = (size, size, 1) if colours == "gray" else image.shape  # gray noise in gray
        image += noise.standard_normal(shape, dtype=np.float32) * np.float32(3.0)
        frames.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


class SyntheticVideos(Dataset):
    """Synthetic videos rendered on the fly (the ``scenes`` layout of the video kind).

    Args:
        split: ``"val"`` (videos ``0 .. num_videos-1`` of ``seed + 1``) or ``"train"``
            (of ``seed``); label propagation uses only the scored split.
        num_videos: videos in the split.
        num_frames: frames per video (the first is the given mask, the first and last are
            not scored, as DAVIS).
        size: frame side in pixels (square frames).
        num_objects: moving objects per video.
        seed: video seed.
        colours: ``"instance"``, ``"palette"`` or ``"gray"``, as ``SceneConfig.colours``.
    """

    def __init__(
        self,
        split: str = "val",
        num_videos: int = 6,
        num_frames: int = 8,
        size: int = 96,
        num_objects: int = 3,
        seed: int = 0,
        colours: str = "instance",
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        SceneConfig(colours=colours)  # ValueError naming the modes
        for name, value, low in (
            ("num_videos", num_videos, 1),
            ("num_frames", num_frames, 3),
            ("size", size, 32),
            ("num_objects", num_objects, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if size > 512 or num_objects > 6:
            raise ValueError(f"size must be <= 512 and num_objects <= 6, got {size}, {num_objects}")
        self.split, self.num_videos, self.num_frames = split, num_videos, num_frames
        self.size, self.num_objects = size, num_objects
        self.image_size = size  # the frame side (the scenes preset reads it)
        self.seed = seed + (1 if split == "val" else 0)
        self.colours = colours

    def __len__(self) -> int:
        return self.num_videos

    @property
    def names(self) -> list[str]:
        return [f"video{i:03d}" for i in range(self.num_videos)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_videos:
            raise IndexError(index)
        frames, masks = render_video(
            index, self.seed, self.num_frames, self.size, self.num_objects, self.colours
        )
        return {
            "name": self.names[index],
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
            "masks": torch.from_numpy(masks),
            "frame_names": [f"{t:05d}" for t in range(self.num_frames)],
            "index": index,
        }


class SyntheticVideosFolder(SyntheticVideos):
    """``--dataset scenes --root DIR`` for videos: refused, the videos exist only in memory."""

    def __init__(self, root: object, split: str = "val", **options: Any) -> None:
        raise DataError(
            "the synthetic videos are rendered in memory: drop --root (a `densessl scenes` "
            "folder holds still images, not videos)"
        )
