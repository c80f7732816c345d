"""Pick the unlabeled training images a run asks for (``data.path``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from densessl.config.schema import DataConfig
from densessl.errors import ConfigError, brief
from densessl.io.decode import display_path
from densessl.io.paths import user_path

if TYPE_CHECKING:
    from densessl.data.scenes.dataset import SceneConfig


def scene_config(cfg: DataConfig) -> SceneConfig:
    """How a run's on-the-fly scenes are drawn (``data.scenes_*``); ``ValueError`` when a value
    is out of the renderer's range."""
    from densessl.data.scenes.dataset import SceneConfig

    return SceneConfig(
        size=cfg.scenes_size,
        class_set=cfg.scenes_class_set,
        colours=cfg.scenes_colours,
        min_objects=cfg.scenes_objects[0],
        max_objects=cfg.scenes_objects[1],
        min_radius=cfg.scenes_radius[0],
        max_radius=cfg.scenes_radius[1],
    )


def build_pretrain_images(cfg: DataConfig) -> Dataset:
    """Images for pretraining, each sample a dict with ``"image"`` (RGB uint8 [3, H, W]).

    ``data.path`` may be ``"scenes"`` (generated on the fly, train split), a folder written
    by ``densessl scenes`` (the images listed in ``splits/train.txt``; labels and validation
    images are never seen), or any folder of images (searched recursively).
    """
    if cfg.path == "scenes":
        from densessl.data.scenes.dataset import SyntheticScenes

        try:
            return SyntheticScenes(
                num_images=cfg.scenes_num_images,
                seed=cfg.scenes_seed,
                split="train",
                config=scene_config(cfg),
            )
        except ValueError as err:  # e.g. a size the scene renderer does not support
            raise ConfigError(
                f"data.scenes_*: {err} (data.scenes_size={cfg.scenes_size}, "
                f"data.scenes_num_images={cfg.scenes_num_images}, "
                f"data.scenes_class_set={brief(cfg.scenes_class_set)}, "
                f"data.scenes_colours={brief(cfg.scenes_colours)}, "
                f"data.scenes_objects={list(cfg.scenes_objects)}, "
                f"data.scenes_radius={list(cfg.scenes_radius)})"
            ) from err
    root = user_path(cfg.path)
    try:
        exists = root.exists()
    except (OSError, ValueError) as err:  # a name too long, a NUL character
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"data.path: {display_path(root)} cannot be used: {reason}") from None
    if not exists:
        raise ConfigError(
            f"data.path: {display_path(root)} does not exist; give a folder of images, or "
            "'scenes' for generated synthetic scenes"
        )
    if not root.is_dir():
        raise ConfigError(f"data.path: {display_path(root)} is a file; give a folder of images")
    from densessl.data.folder import ImageFolderDataset

    train_list = root / "splits" / "train.txt"
    is_scenes = (root / "classes.json").is_file() and (root / "images").is_dir()
    images = ImageFolderDataset(
        root / "images" if is_scenes else root, on_corrupt=cfg.on_corrupt, min_size=cfg.min_size
    )
    if is_scenes and train_list.is_file():
        keep = {line.strip() for line in train_list.read_text().splitlines() if line.strip()}
        images.files = [f for f in images.files if Path(f).stem in keep]
        if not images.files:
            raise ConfigError(
                f"data.path: none of the images listed in {display_path(train_list)} exist"
            )
    return images
