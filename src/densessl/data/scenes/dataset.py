"""Synthetic scenes with exact dense labels: the embedded default dataset.

Each scene is 1-3 background "stuff" regions (split by wavy lines or blobs) with 1-5 "thing"
objects painted over them (later objects occlude earlier ones). A class is a *shape family and
texture pattern*; both colours of every instance are drawn at random, so colour alone says
nothing about the class, and several classes share a shape or a texture so that both cues are
needed (e.g. ``disc-stripes`` vs ``disc-checker`` vs ``square-stripes``). That is the default
class set, ``"shared-cues"``; ``SceneConfig(class_set="distinct-cues")`` draws six thing classes
that share neither shape nor texture (disc-stripes, square-dots, triangle-checker, cross-grid,
hexagon-zigzag, ring-concentric), an easier task at 8-px patches (the quality benchmark's).

Class ids (also in ``classes.json``): stuff first, ``0 .. S-1``, then things ``S .. S+T-1``;
``255`` marks ambiguous pixels (an outline between two classes passes within half a pixel of
the pixel centre), exactly like Pascal VOC's ignore label. With the defaults::

    0 stuff/gradient   1 stuff/grain   2 stuff/waves
    3 thing/disc-stripes   4 thing/disc-checker   5 thing/square-dots   6 thing/square-stripes
    7 thing/triangle-checker   8 thing/star-dots   9 thing/cross-grid   10 thing/hexagon-zigzag

Image ``i`` of seed ``s`` is a pure function of ``(s, i, config)``: geometry and colours come
from ``numpy.random.default_rng([s, i, 0])``, per-pixel noise from ``default_rng([s, i, 1])``,
so neither the order nor the process that renders a scene matters, and the same scene at
another ``size`` shows the same objects (only the pixel noise differs). Rendering takes about
1-2 ms per 96 px image on one core (``benchmarks/scenes_throughput.py``).

A folder written by :func:`write_scenes`::

    images/000000.png ...   RGB
    labels/000000.png ...   mode "L", class ids, 255 = ignore
    splits/train.txt, splits/val.txt   one stem per line (val = the last indices)
    classes.json            written last: a folder without it is incomplete
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from densessl.data.scenes.render import (
    GENERATOR_VERSION,
    IGNORE_INDEX,
    STUFF_CLASSES,
    THING_CLASSES,
    SceneConfig,
    class_names,
    render_scene,
)
from densessl.data.segmentation.files import read_label_png
from densessl.errors import ConfigError, brief
from densessl.io.decode import display_path
from densessl.io.paths import user_path

__all__ = [
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "STUFF_CLASSES",
    "THING_CLASSES",
    "SceneConfig",
    "SyntheticScenes",
    "check_scene_options",
    "class_names",
    "format_statistics",
    "render_scene",
    "scene_statistics",
    "split_indices",
    "write_scenes",
]

_STEM = re.compile(r"^\d{6}\.png$")


def split_indices(num_images: int, split: str, val_fraction: float = 0.2) -> range:
    """Scene indices of ``split``: val is the last ``round(val_fraction * num_images)``."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    num_val = round(val_fraction * num_images)
    if split == "train":
        return range(0, num_images - num_val)
    if split == "val":
        return range(num_images - num_val, num_images)
    if split == "all":
        return range(num_images)
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


def _with_options(
    config: SceneConfig | None,
    size: int | None,
    class_set: str | None = None,
    colours: str | None = None,
    objects: Sequence[int] | None = None,
    radius: Sequence[float] | None = None,
) -> SceneConfig:
    config = config or SceneConfig()
    changes: dict[str, Any] = {}
    if class_set is not None:
        changes["class_set"] = class_set
    if colours is not None:
        changes["colours"] = colours
    if objects is not None:
        changes["min_objects"], changes["max_objects"] = _pair("objects", objects)
    if radius is not None:
        changes["min_radius"], changes["max_radius"] = _pair("radius", radius)
    if size is not None:
        changes["size"] = size
    return replace(config, **changes) if changes else config


def _pair(name: str, value: Sequence[Any]) -> tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or len(value) != 2:
        raise ValueError(f"{name} must be two numbers (smallest, largest), got {brief(value)}")
    return value[0], value[1]


class SyntheticScenes(Dataset):
    """Scenes rendered on the fly; item ``i`` is ``{"image", "label", "index"}``.

    ``image`` is a uint8 tensor [3, H, W] (RGB), ``label`` uint8 [H, W] (255 = ignore),
    ``index`` the scene index: the train split holds scenes ``0 .. n_train-1``, val the last
    ``round(val_fraction * num_images)``. Nothing is cached; each access renders the scene.

    Args:
        num_images: scenes in train and val together.
        size: image side in pixels; overrides ``config.size`` when given (default 96).
        seed: scene seed; scene ``i`` is the same picture in every split, order and process.
        split: ``"train"``, ``"val"`` or ``"all"``.
        config: everything else about the scenes (default ``SceneConfig()``).
        val_fraction: share of ``num_images`` held out as val, in [0, 1).
        class_set: overrides ``config.class_set`` when given (``"shared-cues"`` or
            ``"distinct-cues"``, see :class:`SceneConfig`).
        colours: overrides ``config.colours`` (``"instance"``, ``"palette"`` or ``"gray"``).
        objects / radius: override ``config``'s (fewest, most) objects per scene and
            (smallest, largest) object radius, as a run's ``data.scenes_objects`` /
            ``data.scenes_radius``.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        num_images: int = 1000,
        size: int | None = None,
        seed: int = 0,
        split: str = "train",
        config: SceneConfig | None = None,
        val_fraction: float = 0.2,
        class_set: str | None = None,
        colours: str | None = None,
        objects: Sequence[int] | None = None,
        radius: Sequence[float] | None = None,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.config = _with_options(config, size, class_set, colours, objects, radius)
        self.seed = seed
        self.split = split
        self.indices = split_indices(num_images, split, val_fraction)
        self.class_names = class_names(self.config)
        self.num_classes = self.config.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]  # IndexError past the end ends iteration
        image, label = render_scene(index, self.seed, self.config)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label),
            "index": index,
        }


def _classes_json(config: SceneConfig) -> dict[str, Any]:
    names = class_names(config)
    s = config.num_stuff_classes
    classes: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        if i < s:
            classes.append({"id": i, "name": name, "kind": "stuff", "texture": STUFF_CLASSES[i]})
        else:
            shape, texture = config.thing_classes[i - s]
            entry = {"id": i, "name": name, "kind": "thing", "shape": shape, "texture": texture}
            classes.append(entry)
    return {
        "class_names": names,
        "classes": classes,
        "num_classes": len(names),
        "class_set": config.class_set,
        "colours": config.colours,
        "ignore_index": IGNORE_INDEX,
        "stuff": list(range(s)),
        "things": list(range(s, len(names))),
        "id_order": "stuff 0..S-1, then things S..S+T-1; 255 = ignore (ambiguous boundary)",
    }


def check_scene_options(
    num_images: int,
    size: int,
    seed: int,
    class_set: str = "shared-cues",
    names: Mapping[str, str] | None = None,
    colours: str = "instance",
) -> SceneConfig:
    """The :class:`SceneConfig` of :func:`write_scenes`' arguments, checked before anything
    is written; a bad one raises :class:`~densessl.errors.ConfigError` naming it by
    ``names`` (the CLI's options, ``{"size": "--size", ...}``) or by its parameter name."""
    checks: dict[str, Callable[[], object]] = {
        "class_set": lambda: SceneConfig(class_set=class_set),
        "colours": lambda: SceneConfig(colours=colours),
        "size": lambda: SceneConfig(size=size),
        "num_images": lambda: split_indices(num_images, "train"),
        "seed": lambda: _check_seed(seed),
    }
    for name, check in checks.items():
        try:
            check()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{(names or {}).get(name, name)}: {err}") from None
    return SceneConfig(size=size, class_set=class_set, colours=colours)


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {brief(seed)}")


def write_scenes(
    out_dir: str | os.PathLike[str],
    num_images: int,
    size: int,
    seed: int,
    val_fraction: float = 0.2,
    config: SceneConfig | None = None,
    progress: bool = True,
) -> Path:
    """Render scenes ``0 .. num_images-1`` to ``out_dir`` (layout in the module docstring).

    ``size`` overrides ``config.size``. ``classes.json`` is removed first and written last
    (atomically), so an interrupted write never looks complete. Writing again into a scenes
    folder replaces it (numbered PNGs beyond ``num_images`` are deleted); a file, or a
    non-empty folder that is not a scenes folder, is refused.

    Returns:
        The output folder.
    """
    out = user_path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"write_scenes: {display_path(out)} is an existing file; give a folder path"
        )
    if out.is_dir() and any(out.iterdir()):
        marks = ("classes.json", "images", "labels", "splits")
        if not any((out / m).exists() for m in marks):
            raise FileExistsError(
                f"write_scenes: {display_path(out)} is a non-empty folder that is not a scenes "
                "folder; "
                "give an empty or new folder"
            )
    config = _with_options(config, size)
    train = split_indices(num_images, "train", val_fraction)
    val = split_indices(num_images, "val", val_fraction)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    (out / "classes.json").unlink(missing_ok=True)
    for sub in ("images", "labels", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    wanted = {f"{i:06d}.png" for i in range(num_images)}
    for sub in ("images", "labels"):
        for path in (out / sub).iterdir():
            if _STEM.match(path.name) and path.name not in wanted:
                path.unlink()

    for i in tqdm(range(num_images), desc="scenes", unit="img", disable=not progress):
        image, label = render_scene(i, seed, config)
        Image.fromarray(image, "RGB").save(out / "images" / f"{i:06d}.png")
        Image.fromarray(label, "L").save(out / "labels" / f"{i:06d}.png")
    for name, indices in (("train", train), ("val", val)):
        (out / "splits" / f"{name}.txt").write_text("".join(f"{i:06d}\n" for i in indices))

    meta = {
        "generator": "densessl.data.scenes.dataset",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": config.size,
        "num_images": num_images,
        "val_fraction": val_fraction,
        "num_train": len(train),
        "num_val": len(val),
        "config": asdict(config),
        **_classes_json(config),
    }
    tmp = out / "classes.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "classes.json")
    return out


def _folder_labels(root: Path) -> tuple[dict[str, Any], dict[str, int], list[np.ndarray]]:
    meta_path = root / "classes.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{root} has no classes.json: not a scenes folder, or its writing was interrupted"
        )
    meta = json.loads(meta_path.read_text())
    splits: dict[str, int] = {}
    labels: list[np.ndarray] = []
    for name in ("train", "val"):
        stems = (root / "splits" / f"{name}.txt").read_text().split()
        splits[name] = len(stems)
        for stem in stems:  # class indices, never colours (RGB label PNGs are refused)
            labels.append(read_label_png(root / "labels" / f"{stem}.png"))
    return meta, splits, labels


def scene_statistics(
    source: SyntheticScenes | Dataset | str | os.PathLike[str],
) -> dict[str, Any]:
    """Per-class pixel fractions and image counts of a scenes dataset or written folder.

    ``source`` is a :class:`SyntheticScenes` (or any dataset with ``class_names`` whose items
    hold a ``"label"``) or a folder written by :func:`write_scenes` (all images of its splits).

    Returns:
        ``{"num_images", "num_pixels", "size", "splits": {name: count}, "ignore_fraction",
        "classes": [{"id", "name", "pixel_fraction", "image_count"}, ...]}``; fractions are of
        all pixels, so they sum to 1 together with ``ignore_fraction``.
    """
    if isinstance(source, (str, os.PathLike)):
        meta, splits, labels = _folder_labels(Path(source))
        names: list[str] = list(meta["class_names"])
        label_iter: Any = labels
    else:
        names = list(source.class_names)
        splits = {getattr(source, "split", "dataset"): len(source)}
        label_iter = (np.asarray(source[i]["label"]) for i in range(len(source)))
    pixels = np.zeros(256, np.int64)
    images = np.zeros(256, np.int64)
    count, size = 0, 0
    for label in label_iter:
        hist = np.bincount(label.ravel(), minlength=256)
        pixels += hist
        images += hist > 0
        count += 1
        size = max(size, *label.shape)
    total = int(pixels.sum())
    denom = max(total, 1)
    unknown = [i for i in np.flatnonzero(pixels) if i >= len(names) and i != IGNORE_INDEX]
    if unknown:
        raise ValueError(f"labels hold ids {unknown} beyond the {len(names)} classes")
    return {
        "num_images": count,
        "num_pixels": total,
        "size": size,
        "splits": splits,
        "ignore_fraction": float(pixels[IGNORE_INDEX]) / denom,
        "classes": [
            {
                "id": i,
                "name": name,
                "pixel_fraction": float(pixels[i]) / denom,
                "image_count": int(images[i]),
            }
            for i, name in enumerate(names)
        ],
    }


def format_statistics(stats: dict[str, Any]) -> str:
    """A readable table of :func:`scene_statistics`."""
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    width = max([len(c["name"]) for c in stats["classes"]] + [len("ignore (255)")])
    lines = [
        f"{stats['num_images']} images ({splits}), {stats['size']} px, "
        f"{len(stats['classes'])} classes",
        f"{'id':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>6}",
    ]
    for c in stats["classes"]:
        lines.append(
            f"{c['id']:>3}  {c['name']:<{width}}  {100 * c['pixel_fraction']:6.2f}%  "
            f"{c['image_count']:>6}"
        )
    ignore = 100 * stats["ignore_fraction"]
    lines.append(f"{'':>3}  {'ignore (255)':<{width}}  {ignore:6.2f}%")
    return "\n".join(lines)
