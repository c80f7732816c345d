"""Video layouts: DAVIS-2017 on files the test writes, and the synthetic videos."""

from __future__ import annotations

import pytest
import torch

from densessl.data.video.davis import DAVISVideos
from densessl.data.video.scenes import SyntheticVideos, SyntheticVideosFolder
from densessl.errors import DataError
from helpers import write_davis_fixture


def test_davis_layout_reads_sequences_and_names_what_is_missing(tmp_path):
    root = write_davis_fixture(
        tmp_path / "DAVIS", sequences=("a", "b"), num_frames=3, size=(48, 64)
    )
    videos = DAVISVideos(root)
    item = videos[1]
    assert len(videos) == 2 and videos.names == ["a", "b"] and item["name"] == "b"
    assert item["frames"].shape == (3, 3, 48, 64) and item["masks"].shape == (3, 48, 64)
    assert set(item["masks"].unique().tolist()) == {0, 1, 2}  # palette indices, not colours
    assert item["frame_names"] == ["00000", "00001", "00002"]
    assert len(DAVISVideos(root, sequences=["a"])) == 1
    with pytest.raises(DataError, match="not in"):
        DAVISVideos(root, sequences=["zebra"])
    (root / "Annotations" / "480p" / "b" / "00002.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"DAVIS-2017 layout.*Annotations/480p/b/00002\.png"
    ):
        DAVISVideos(root)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/val\.txt"):
        DAVISVideos(tmp_path / "empty")


def test_synthetic_videos_refuse_a_root():
    with pytest.raises(DataError, match="in memory"):
        SyntheticVideosFolder("somewhere")


def test_synthetic_videos_move_occlude_and_are_reproducible():
    a, b = (
        SyntheticVideos(num_videos=2, num_frames=5, size=64)[1],
        SyntheticVideos(num_videos=2, num_frames=5, size=64)[1],
    )
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])
    assert a["frames"].shape == (5, 3, 64, 64) and a["masks"].shape == (5, 64, 64)
    ids = set(a["masks"].unique().tolist())
    assert {0, 1, 2, 3} <= ids | {3}  # background and the objects
    assert not torch.equal(a["masks"][0], a["masks"][-1])  # objects move


def test_gray_and_palette_videos_keep_the_motion():
    default = SyntheticVideos(num_videos=2, num_frames=4, size=64)[0]
    gray = SyntheticVideos(num_videos=2, num_frames=4, size=64, colours="gray")[0]
    palette = SyntheticVideos(num_videos=2, num_frames=4, size=64, colours="palette")[0]
    assert torch.equal(default["masks"], gray["masks"]) and torch.equal(
        gray["masks"], palette["masks"]
    )
    frames = gray["frames"]
    assert torch.equal(frames[:, 0], frames[:, 1]) and torch.equal(frames[:, 1], frames[:, 2])
    assert not torch.equal(palette["frames"][:, 0], palette["frames"][:, 1])
    with pytest.raises(ValueError, match="colours"):
        SyntheticVideos(colours="sepia")


def test_objects_get_occluded_in_the_default_videos():
    videos = SyntheticVideos()  # 6 videos x 8 frames, 3 objects, 96 px
    shrink = []
    for i in range(len(videos)):
        masks = videos[i]["masks"]
        for k in (1, 2, 3):
            areas = (masks == k).flatten(1).sum(1).float()
            assert areas[0] > 0  # every object is visible in the first (given) frame
            shrink.append(float(areas.min() / areas.max()))
    assert min(shrink) < 0.5  # an object mostly hidden behind a front one at some point


def test_colour_coded_davis_masks_are_refused(tmp_path):
    from PIL import Image

    root = write_davis_fixture(tmp_path / "DAVIS", sequences=("a",), num_frames=3, size=(48, 64))
    Image.new("RGB", (64, 48)).save(root / "Annotations" / "480p" / "a" / "00001.png")
    with pytest.raises(DataError, match="single-channel PNG"):
        DAVISVideos(root)[0]
