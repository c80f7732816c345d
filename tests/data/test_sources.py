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


def test_scene_colours_reach_the_scenes_and_bad_values_are_named():
    gray = build_pretrain_images(
        DataConfig(path="scenes", scenes_num_images=10, scenes_colours="gray")
    )
    image = gray[0]["image"]
    assert gray.config.colours == "gray" and (image[0] == image[1]).all()
    with pytest.raises(ConfigError, match=r"data\.scenes_colours='sepia'"):
        build_pretrain_images(DataConfig(path="scenes", scenes_colours="sepia"))


def test_missing_and_file_paths_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_pretrain_images(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        build_pretrain_images(DataConfig(path=str(tmp_path / "a.txt")))


def test_scene_geometry_reaches_the_renderer_and_bad_values_are_named():
    import numpy as np

    big = build_pretrain_images(
        DataConfig(path="scenes", scenes_num_images=20, scenes_objects=(1, 2),
                   scenes_radius=(0.3, 0.4), scenes_class_set="distinct-cues")
    )  # fmt: skip
    assert (big.config.min_objects, big.config.max_objects) == (1, 2)
    assert (big.config.min_radius, big.config.max_radius) == (0.3, 0.4)
    default = build_pretrain_images(
        DataConfig(path="scenes", scenes_num_images=20, scenes_class_set="distinct-cues")
    )

    def thing_share(scenes):  # class ids >= 3 are objects (3 stuff classes), 255 ignored
        return np.mean([((s["label"] >= 3) & (s["label"] < 255)).float().mean() for s in scenes])

    assert thing_share(big) > 1.3 * thing_share(default)
    with pytest.raises(ConfigError, match=r"data\.scenes_radius=\[0\.2, 0\.5\]"):
        build_pretrain_images(DataConfig(path="scenes", scenes_radius=(0.2, 0.5)))
    with pytest.raises(ConfigError, match=r"max_objects"):
        build_pretrain_images(DataConfig(path="scenes", scenes_objects=(3, 13)))
