"""Keypoint-pair layouts: SPair-71k on files the test writes, the synthetic view pairs."""

from __future__ import annotations

import json

import pytest
import torch

from densessl.data.keypoints.scenes import SyntheticPairs, SyntheticPairsFolder
from densessl.data.keypoints.spair import SPairPairs
from densessl.errors import DataError
from densessl.evaluation.correspondence.protocol import (
    CorrespondenceProtocol,
    evaluate_correspondence,
)
from helpers import RandomFeatures, write_spair_fixture


def test_synthetic_pairs_refuse_a_root_and_are_reproducible():
    with pytest.raises(DataError, match="in memory"):
        SyntheticPairsFolder("somewhere")
    a, b = SyntheticPairs(num_pairs=2)[1], SyntheticPairs(num_pairs=2)[1]
    assert torch.equal(a["source"], b["source"]) and torch.equal(a["target_kps"], b["target_kps"])
    assert a["source"].shape == (3, 96, 96) and a["source_kps"].shape[1] == 2


def test_synthetic_pairs_take_the_class_set_and_colours():
    pairs = SyntheticPairs(num_pairs=3, class_set="distinct-cues", colours="gray")
    assert pairs.config.class_set == "distinct-cues" and len(pairs.names) == 9
    item = pairs[0]
    assert item["category"] in pairs.names
    assert torch.equal(item["source"][0], item["source"][2])  # gray: r = g = b
    default = SyntheticPairs(num_pairs=3)[0]
    assert default["category"] in SyntheticPairs(num_pairs=1).names


def test_synthetic_correspondences_are_exact():
    pairs = SyntheticPairs(num_pairs=4, size=96)
    for i in range(len(pairs)):
        item = pairs[i]
        boxes, flips, scene = (
            item["views"]["boxes"],
            item["views"]["flips"],
            item["views"]["scene_size"],
        )
        # back to the scene: both views' keypoints land on the same scene points
        back = []
        for kps, (x0, y0, side), flip in zip(
            (item["source_kps"], item["target_kps"]), boxes, flips, strict=True
        ):
            uv = kps.double().clone()
            if flip:
                uv[:, 0] = 96 - uv[:, 0]
            back.append(uv * side / 96 + torch.tensor([x0, y0], dtype=torch.float64))
        assert torch.allclose(back[0], back[1], atol=1e-4)
        assert (back[0] >= 0).all() and (back[0] <= scene).all()
        x1, y1, x2, y2 = item["bbox"].tolist()
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        assert item["category"].startswith("thing/")


def test_spair_layout_reads_pairs_and_names_missing_files(tmp_path):
    root = write_spair_fixture(tmp_path / "SPair-71k")
    pairs = SPairPairs(root)
    item = pairs[1]
    assert len(pairs) == 2 and pairs.categories == ["cat"]
    assert item["source"].shape == (3, 48, 64) and item["target_kps"].tolist() == [
        [12, 14],
        [33, 25],
    ]
    assert item["bbox"].tolist() == [5, 6, 45, 40] and item["category"] == "cat"
    result = evaluate_correspondence(
        RandomFeatures(), pairs, CorrespondenceProtocol(image_size=64), progress=False
    )
    assert result["per_category"]["cat"]["num_keypoints"] == 4 and len(result["per_pair"]) == 2
    (root / "JPEGImages" / "cat" / "t0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"SPair-71k layout.*JPEGImages/cat/t0\.jpg"):
        SPairPairs(root)
    with pytest.raises(FileNotFoundError, match="PairAnnotation"):
        SPairPairs(tmp_path / "nothing")


def test_a_broken_pair_annotation_is_named(tmp_path):
    root = write_spair_fixture(tmp_path / "SPair-71k", pairs=1)
    ann = next((root / "PairAnnotation" / "test").glob("*.json"))
    ann.write_text(json.dumps({"category": "cat"}))
    with pytest.raises(DataError, match=rf"{ann.name}.*lacks src_imname"):
        SPairPairs(root)
    ann.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        SPairPairs(root)
