from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densessl.config.schema import DataConfig
from densessl.data.scenes.dataset import write_scenes
from densessl.data.sources import build_pretrain_images
from densessl.errors import ConfigError


def test_written_scenes_use_only_the_train_split(tmp_path):
    root = write_scenes(tmp_path / "scenes", 10, 64, seed=1, progress=False)
    images = build_pretrain_images(DataConfig(path=str(root)))
    train = (root / "splits" / "train.txt").read_text().split()
    val = (root / "splits" / "val.txt").read_text().split()
    assert sorted(Path(f).stem for f in images.files) == sorted(train)
    assert val and not set(val) & {Path(f).stem for f in images.files}
    assert images[0]["image"].shape == (3, 64, 64)


def test_generated_scenes_and_plain_folders(tmp_path):
    scenes = build_pretrain_images(DataConfig(path="scenes", scenes_num_images=20))
    assert len(scenes) == 16  # 20 % validation held out
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 50), 30 * i, np.uint8)).save(folder / f"{i}.png")
    images = build_pretrain_images(DataConfig(path=str(tmp_path / "photos")))
    assert len(images) == 3 and images[0]["image"].shape == (3, 40, 50)


def test_scene_class_set_reaches_the_scenes_and_bad_values_are_named():
    scenes = build_pretrain_images(
        DataConfig(path="scenes", scenes_num_images=10, scenes_class_set="distinct-cues")
    )
    assert scenes.config.class_set == "distinct-cues" and scenes.num_classes == 9
    with pytest.raises(ConfigError, match=r"data\.scenes_class_set='hard'"):
        build_pretrain_images(DataConfig(path="scenes", scenes_class_set="hard"))


def test_missing_and_file_paths_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_pretrain_images(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        build_pretrain_images(DataConfig(path=str(tmp_path / "a.txt")))
