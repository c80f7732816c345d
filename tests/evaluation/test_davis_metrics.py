"""DAVIS J and F against davis2017-evaluation's own functions.

Values computed once with davisvideochallenge/davis2017-evaluation
@ac7c43fca936f9722837b7fbd337d284ba37004b (davis2017/metrics.py ``db_eval_iou``,
``db_eval_boundary``; davis2017/utils.py ``db_statistics``; OpenCV 5.0, scikit-image 0.26)
on the masks built below.
"""

from __future__ import annotations

import numpy as np
import pytest

from densessl.evaluation.video.davis_metrics import (
    aggregate,
    boundary_f,
    object_statistics,
    region_j,
    score_sequence,
)

OFFICIAL = {  # (J, F at bound_th=0.008, F at bound_th=3 px)
    (40, 50): (0.540650406504065, 0.39214423696072115, 0.7727272727272727),
    (120, 90): (0.645039765592298, 0.4517309940943425, 0.6350793336290774),
    (200, 300): (0.6653043848446147, 0.5742599921033674, 0.5742599921033674),
}


def _masks() -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)

    def blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
        ys, xs = np.mgrid[0:h, 0:w]
        return ((ys - cy) ** 2 + ((xs - cx) * 0.8) ** 2 < r * r) | (rng.random((h, w)) < 0.02)

    out = {}
    for h, w in OFFICIAL:
        gt = blob(h, w, h / 2, w / 2, min(h, w) / 4)
        out[(h, w)] = gt, blob(h, w, h / 2 + 3, w / 2 - 2, min(h, w) / 4.5)
    return out


@pytest.mark.parametrize("shape", list(OFFICIAL))
def test_j_and_f_equal_the_official_functions(shape):
    gt, pred = _masks()[shape]
    j, f, f3 = OFFICIAL[shape]
    assert region_j(gt, pred) == pytest.approx(j, abs=1e-12)
    assert boundary_f(gt, pred) == pytest.approx(f, abs=1e-12)
    assert boundary_f(gt, pred, bound_th=3) == pytest.approx(f3, abs=1e-12)


def test_empty_masks_follow_the_official_conventions():
    empty = np.zeros((30, 30), bool)
    square = empty.copy()
    square[5:9, 5:9] = True
    assert region_j(empty, empty) == 1.0
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(square, empty) == 0.0  # prediction empty: P=1, R=0
    assert boundary_f(empty, square) == 0.0  # ground truth empty: P=0, R=1
    assert region_j(square, empty) == 0.0


def test_statistics_equal_db_statistics():
    v = [0.9, 0.8, 0.85, np.nan, 0.4, 0.3, 0.6, 0.7, 0.2, 0.95, 0.1, 0.5, 0.55]
    assert object_statistics(v) == pytest.approx(
        (0.5708333333333333, 0.5384615384615384, 0.32500000000000007), abs=1e-12
    )
    assert object_statistics([0.2, 0.7, 0.9]) == pytest.approx(
        (0.6, 0.6666666666666666, -0.45000000000000007), abs=1e-12
    )


def test_sequences_skip_first_and_last_frames_and_pool_objects():
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 10:18, 10:18] = 2
    pred = gt.copy()
    pred[0] = 0  # frame 0 and the last frame are not scored
    pred[3] = 0
    pred[1:3][gt[1:3] == 2] = 0  # object 2 missed in the scored frames
    rows = score_sequence(gt, pred)
    assert [r["object"] for r in rows] == [1, 2]
    assert rows[0]["J"]["mean"] == 1.0 and rows[1]["J"]["mean"] == 0.0
    assert len(rows[0]["J_frames"]) == 2
    one = score_sequence(gt[:, :, :9], pred[:, :, :9])  # a second sequence with 1 object
    scores = aggregate({"a": rows, "b": one[:1]})
    assert scores["J-Mean"] == pytest.approx(2 / 3)  # objects pooled, not sequences
    assert scores["J&F-Mean"] == pytest.approx((scores["J-Mean"] + scores["F-Mean"]) / 2)


def test_an_id_above_the_first_frame_objects_is_refused():
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[:, :3, :3] = 1
    pred = gt.copy()
    pred[1, 5:, 5:] = 2
    with pytest.raises(ValueError, match="object id 2"):
        score_sequence(gt, pred)


@pytest.mark.parametrize("radius", [1, 3, 8])
def test_dilation_equals_the_disk_dilation(radius):
    from scipy.ndimage import binary_dilation

    from densessl.evaluation.video.davis_metrics import _dilate, disk

    mask = np.random.default_rng(radius).random((40, 50)) < 0.01
    expected = binary_dilation(mask, structure=disk(radius))
    assert np.array_equal(_dilate(mask, radius), expected)
    assert disk(1).sum() == 5 and disk(8).sum() == 197  # skimage.morphology.disk sizes
