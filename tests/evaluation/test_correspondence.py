"""``correspondence``: nearest-neighbour keypoint transfer and PCK, against Probe3D.

Official values: mbanani/probe3d @a1f14640076e38b8bc07b66d0fe2d01d15691e9d,
evaluate_spair_correspondence.py ``compute_errors`` (CPU run, faiss/hydra stubbed: unused
there) on the features and keypoints built in :func:`_fixed_inputs`, ``thresh_scale=1``;
errors are in units of the 128-px image side.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import densessl
from densessl.data.keypoints.scenes import SyntheticPairs
from densessl.evaluation.correspondence.matching import keypoint_features, predict_keypoints
from densessl.evaluation.correspondence.oracle import CoordinateOracle, PaintedPairs
from densessl.evaluation.correspondence.protocol import (
    CorrespondenceProtocol,
    evaluate_correspondence,
)
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from helpers import RandomFeatures, write_spair_fixture

PROBE3D_ERRORS = [
    0.08156489580869675,
    0.08156489580869675,
    0.05949822813272476,
    0.07074519991874695,
    0.9924643039703369,
    0.17134150862693787,
    0.0845051109790802,
    0.16424840688705444,
]
PROBE3D_IN_BOTH = [0, 1, 2, 4, 5, 6, 8, 9]
PROBE3D_RECALL = 62.5  # % of errors < 0.1


def _fixed_inputs():
    rng = np.random.default_rng(5)
    feats = torch.from_numpy(rng.standard_normal((2, 16, 8, 8)).astype(np.float32))
    feats[1] = torch.roll(feats[0], shifts=(1, 2), dims=(1, 2)) + 0.3 * feats[1]
    kps_i = np.concatenate([rng.integers(0, 128, (10, 2)), np.ones((10, 1), int)], 1)
    kps_j = kps_i.copy()
    kps_j[:, 0] += 32
    kps_j[:, 1] += 16
    kps_j[:, :2] = np.clip(kps_j[:, :2] + rng.integers(-6, 7, (10, 2)), 0, 127)
    kps_i[3, 2] = 0
    kps_j[7, 2] = 0
    return feats, torch.from_numpy(kps_i).float(), torch.from_numpy(kps_j).float()


def test_transfer_and_errors_equal_probe3d():
    feats, kps_i, kps_j = _fixed_inputs()
    feats = F.normalize(feats, dim=1)
    both = (kps_i[:, 2] * kps_j[:, 2]) == 1
    assert both.nonzero().squeeze(1).tolist() == PROBE3D_IN_BOTH
    query = keypoint_features(feats[0], kps_i[both, :2], 128)
    pred = predict_keypoints(query, feats[1], 128)
    errors = (pred - kps_j[both, :2]).norm(dim=1) / 128
    assert errors.tolist() == pytest.approx(PROBE3D_ERRORS, abs=1e-6)
    assert float((errors < 0.1).float().mean() * 100) == PROBE3D_RECALL


def test_centre_and_soft_argmax_options():
    feats = F.normalize(torch.randn(8, 4, 4), dim=0)
    query = feats[:, 2, 1][None]  # exactly the feature of cell (row 2, col 1)
    assert predict_keypoints(query, feats, 64).tolist() == [[16.0, 32.0]]
    assert predict_keypoints(query, feats, 64, "centre").tolist() == [[24.0, 40.0]]
    soft = predict_keypoints(query, feats, 64, "centre", soft_argmax=True, temperature=1e-3)
    assert soft[0].tolist() == pytest.approx([24.0, 40.0], abs=1e-3)


def test_coordinate_oracle_and_random_floor_separate_on_synthetic_pairs():
    pairs = SyntheticPairs(num_pairs=8, size=96)
    p = CorrespondenceProtocol.for_scenes(image_size=96)  # predictions at cell centres
    ceiling = evaluate_correspondence(CoordinateOracle(), PaintedPairs(pairs), p, progress=False)
    floor = evaluate_correspondence(RandomFeatures(), pairs, p, progress=False)
    assert ceiling["pck_keypoints"] > 0.3
    assert floor["pck_keypoints"] < 0.1
    assert (
        ceiling["num_pairs"] == 8
        and sum(c["num_pairs"] for c in ceiling["per_category"].values()) == 8
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("alpha", 0), ("threshold", "box"), ("predict_at", "middle"), ("pairs_per_category", 0)],
)
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"CorrespondenceProtocol.{key}"):
        CorrespondenceProtocol(**{key: value})


def test_api_on_the_spair_layout_writes_per_category_json(tmp_path):
    root = write_spair_fixture(tmp_path / "SPair-71k")
    out = tmp_path / "spair.json"
    densessl.evaluate(
        "correspondence",
        backbone=RandomFeatures(),
        dataset="spair",
        root=root,
        out=out,
        image_size=64,
        progress=False,
        verbose=False,
    )
    saved = json.loads(out.read_text())
    assert saved["dataset"]["val_split"] == "test" and saved["dataset"]["kind"] == "keypoint_pairs"
    assert saved["settings"]["alpha"] == 0.1 and saved["settings"]["threshold"] == "bbox"
    assert (
        "probe3d" in saved["source"] and saved["results"]["per_category"]["cat"]["num_pairs"] == 2
    )
    assert [r["metric"] for r in saved["summary"]] == ["PCK@0.1", "PCK@0.1"]


def test_scenes_are_the_default_dataset_with_the_cpu_preset():
    record = densessl.evaluate(
        "correspondence",
        backbone=RandomFeatures(),
        progress=False,
        verbose=False,
        data={"num_pairs": 3, "size": 64},
    )
    assert record["dataset"]["name"] == "scenes" and record["dataset"]["val_split"] == "test"
    assert record["settings"]["image_size"] == 64 and record["settings"]["predict_at"] == "centre"
    assert record["results"]["num_pairs"] == 3


def test_inputs_equal_probe3ds_padding_and_torchvision_resize():
    from torchvision import transforms

    from densessl.evaluation.correspondence.protocol import square_input

    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 30, 50), np.uint8))
    padded = np.pad(image.permute(1, 2, 0).numpy(), ((0, 20), (0, 0), (0, 0)), constant_values=255)
    probe3d = transforms.Compose(
        [
            transforms.Resize(
                (64, 64), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True
            ),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(Image.fromarray(padded))  # evals/datasets/spair.py's image_transform after get_image
    ours, sx, sy = square_input(image, 64, pad=True)
    assert torch.allclose(ours, probe3d, atol=1e-6) and sx == sy == 64 / 50
