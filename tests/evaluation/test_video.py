"""``video``: DINO's DAVIS label propagation, end to end against the official scripts.

Official values: facebookresearch/dino @7c446df5b9f45747937fb0d72314eb9f7b66930a
(eval_video_segmentation.py: ``read_seg``, ``eval_video_tracking_davis`` with
n_last_frames=7, size_mask_neighborhood=12, topk=5, patch 16; CPU run) writing PNGs, then
davisvideochallenge/davis2017-evaluation @ac7c43fca936f9722837b7fbd337d284ba37004b
(``DAVISEvaluation(root, "semi-supervised", "val").evaluate``), on
``helpers.write_davis_fixture`` (480x640 frames, so no frame resize) with
``helpers.PatchStatsModel`` as the backbone. The official masks matched densessl's pixel for
pixel on every frame.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import densessl
from densessl.cli import main
from densessl.data.video.davis import DAVISVideos
from densessl.data.video.scenes import SyntheticVideos
from densessl.errors import ConfigError
from densessl.evaluation.video.oracle import MaskOracle, PaintedVideos
from densessl.evaluation.video.propagation import neighbourhood_mask, propagate_frame
from densessl.evaluation.video.protocol import VideoProtocol, evaluate_video, frame_size
from helpers import PatchStatsModel, RandomFeatures, write_davis_fixture

OFFICIAL_TOY_A = {  # per object: (J-Mean, F-Mean), the official per-sequence CSV's values
    "toy-a_1": (0.9031005921103994, 0.9457950076582267),
    "toy-a_2": (0.9024035991835824, 0.9629986112487221),
}


def test_matches_dino_and_davis2017_evaluation(tmp_path):
    root = write_davis_fixture(tmp_path / "DAVIS", sequences=("toy-a",))
    result = evaluate_video(
        PatchStatsModel().eval(), DAVISVideos(root), VideoProtocol(), progress=False
    )
    for key, (j, f) in OFFICIAL_TOY_A.items():
        assert result["per_object"][key]["J-Mean"] == pytest.approx(j, abs=1e-9)
        assert result["per_object"][key]["F-Mean"] == pytest.approx(f, abs=1e-9)
    jm = sum(j for j, _ in OFFICIAL_TOY_A.values()) / 2
    fm = sum(f for _, f in OFFICIAL_TOY_A.values()) / 2
    assert result["J&F-Mean"] == pytest.approx((jm + fm) / 2, abs=1e-9)
    assert result["num_objects"] == 2 and result["per_sequence"]["toy-a"]["objects"].keys() == {
        "1",
        "2",
    }


def test_frame_size_floors_the_long_side_to_64():
    assert frame_size(480, 854, 480, 64) == (480, 832)  # DAVIS 480p: a 30x52 grid at 16 px
    assert frame_size(854, 480, 480, 64) == (832, 480)
    assert frame_size(480, 480, 480, 64) == (480, 448)  # as the script: 7.5 x 64 floored
    assert frame_size(64, 64, 64, 64) == (64, 64)  # the scenes preset: multiple = side


def test_window_is_square_and_topk_is_joint_over_the_context():
    mask = neighbourhood_mask(5, 5, 1).reshape(5, 5, 5, 5)
    assert mask[2, 2].sum() == 9 and mask[0, 0].sum() == 4 and mask[2, 2, 1, 3] == 1
    target = torch.eye(4)[:1].repeat(4, 1)  # 4 target patches, all with feature e0
    context = torch.stack([torch.eye(4), torch.eye(4).flip(0)])  # e0 at patch 0, then at 3
    labels = torch.zeros(2, 2, 4)
    labels[0, 1], labels[0, 0, 0], labels[0, 1, 0] = 1.0, 1.0, 0.0  # frame 0: class 0 at patch 0
    labels[1, 1] = 1.0  # frame 1: class 1 everywhere
    for k in (1, 2):  # the two exact matches win jointly; k=1 keeps the tie at the k-th value
        out = propagate_frame(target, context, labels, topk=k)
        assert torch.allclose(out, torch.full((2, 4), 0.5), atol=1e-6)
    out = propagate_frame(target, context[:1], labels[:1], topk=1)
    assert torch.allclose(out, torch.tensor([[1.0] * 4, [0.0] * 4]))


def test_oracle_ceiling_and_random_floor_separate_on_synthetic_videos():
    videos = SyntheticVideos(num_videos=3, num_frames=6, size=64)
    p = VideoProtocol.for_scenes(image_size=64)
    ceiling = evaluate_video(MaskOracle(8), PaintedVideos(videos), p, progress=False)
    floor = evaluate_video(RandomFeatures(), videos, p, progress=False)
    assert ceiling["J&F-Mean"] > 0.5  # 0.58: 8x8 patches on 64 px frames, F within 1 px
    assert floor["J&F-Mean"] < 0.2  # 0.05
    assert floor["J&F-Mean"] < ceiling["J&F-Mean"] - 0.3
    assert set(ceiling["per_sequence"]) == set(videos.names)


@pytest.mark.parametrize(
    ("key", "value"), [("topk", 0), ("temperature", 0.0), ("std_typo", "yes"), ("multiple", -1)]
)
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"VideoProtocol.{key}"):
        VideoProtocol(**{key: value})


def test_api_on_the_davis_layout_writes_settings_and_per_sequence_json(tmp_path, capsys):
    root = write_davis_fixture(tmp_path / "DAVIS", sequences=("s1",), num_frames=4, size=(48, 64))
    out = tmp_path / "video.json"
    model = PatchStatsModel().eval()
    record = densessl.evaluate(
        "video", backbone=model, dataset="davis", root=root, out=out, short_side=48, progress=False
    )
    saved = json.loads(out.read_text())
    assert saved["protocol"] == "video" and saved["dataset"]["kind"] == "video"
    assert saved["settings"]["short_side"] == 48 and saved["settings"]["n_last_frames"] == 7
    assert "dino @7c446df" in saved["source"] and "davis2017-evaluation" in saved["source"]
    assert set(saved["results"]["per_object"]) == {"s1_1", "s1_2"}
    assert saved["summary"][0]["result"] == "J&F-Mean"
    assert record["results"]["J&F-Mean"] == saved["results"]["J&F-Mean"]
    assert "J&F %" in capsys.readouterr().out


def test_cli_names_a_missing_davis_folder_and_a_bad_patch_multiple(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "video",
                "--backbone",
                "random:vit_tiny",
                "--dataset",
                "davis",
                "--root",
                str(tmp_path / "none"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "DAVIS-2017 layout" in capsys.readouterr().err
    root = write_davis_fixture(tmp_path / "DAVIS", sequences=("s1",), num_frames=3, size=(48, 64))
    with pytest.raises(ConfigError, match="multiple of the backbone's patch size 16"):
        densessl.evaluate(
            "video",
            backbone=PatchStatsModel(),
            dataset="davis",
            root=root,
            short_side=40,
            progress=False,
            verbose=False,
        )


def test_scenes_are_the_default_dataset_with_the_cpu_preset():
    record = densessl.evaluate(
        "video",
        backbone=RandomFeatures(),
        progress=False,
        verbose=False,
        data={"num_videos": 2, "num_frames": 4, "size": 64},
    )
    assert record["dataset"]["name"] == "scenes" and record["dataset"]["num_val"] == 2
    assert record["settings"]["short_side"] == 64 and record["settings"]["neighbourhood"] == 4
    assert set(record["results"]["per_sequence"]) == {"video000", "video001"}


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((480, 832), (480, 854)),
        ((480, 854), (30, 52)),
        ((832, 480), (854, 480)),
        ((854, 480), (52, 30)),
    ],
)
def test_nearest_resizes_follow_pil_as_the_script(src, dst):
    import numpy as np
    from PIL import Image

    from densessl.evaluation.video.propagation import soft_to_mask

    labels = np.random.default_rng(0).integers(0, 4, src).astype(np.uint8)
    pil = np.array(Image.fromarray(labels).resize((dst[1], dst[0]), 0))
    onehot = F.one_hot(torch.from_numpy(labels).long(), 4).permute(2, 0, 1).float()
    assert np.array_equal(soft_to_mask(onehot, 1, dst).numpy(), pil)  # patch 1: no upsampling
