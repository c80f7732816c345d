"""DAVIS region similarity J and boundary F-measure, and their per-object statistics.

The definitions of the DAVIS-2017 evaluation code (Pont-Tuset et al. 2017;
davisvideochallenge/davis2017-evaluation @ac7c43f, davis2017/metrics.py, utils.py,
evaluation.py, evaluation_method.py), written for densessl (numpy + scipy, no OpenCV) and
pinned to it in ``tests/evaluation/test_davis_metrics.py``:

* **J** (``db_eval_iou``): ``|A & B| / |A | B|`` per frame; an empty union gives 1.
* **F** (``db_eval_boundary``): one-pixel boundary maps (``_seg2bmap``: a pixel differs
  from its east, south or south-east neighbour), each dilated by a disk (skimage's ``disk``,
  here as an exact distance transform) of radius ``ceil(bound_th * ||(H, W)||)`` pixels
  (``bound_th = 0.008``; a value >= 1 is pixels);
  precision = matched predicted boundary / predicted boundary, recall likewise for the
  ground truth, ``F = 2PR / (P + R)`` (0 when P + R = 0). Empty boundaries: predicted empty
  -> P=1, R=0; ground truth empty -> P=0, R=1; both empty -> F=1.
* **Semi-supervised scoring**: the first and the last frame are left out; objects are the
  ids ``1 .. max`` of the first ground-truth frame (255, void, counts as background);
  each object gets mean M = nanmean, recall R = mean(values > 0.5) and decay D (mean of the
  first minus the last of four ``linspace`` bins); ``J&F-Mean = (mean_obj J-M +
  mean_obj F-M) / 2`` over all objects of all sequences pooled (a 4-object sequence weighs
  4x a 1-object one).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

__all__ = [
    "BOUND_TH",
    "aggregate",
    "boundary_f",
    "boundary_map",
    "disk",
    "object_statistics",
    "region_j",
    "score_sequence",
]

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (davis2017/metrics.py)."""


def region_j(gt: np.ndarray, pred: np.ndarray) -> float:
    """Jaccard index of two binary ``[H, W]`` masks; 1.0 when both are empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.sum(gt | pred)
    if union == 0:
        return 1.0
    return float(np.sum(gt & pred) / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary ``[H, W]`` mask (davis ``_seg2bmap`` at full size)."""
    seg = mask.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    """Boolean disk ``x^2 + y^2 <= r^2`` on the grid ``-r .. r`` (skimage's ``disk``)."""
    r = int(radius)
    grid = np.arange(-r, r + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def _dilate(boundary: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by :func:`disk` ``(radius)``: pixels within Euclidean distance
    ``radius`` of a boundary pixel (an exact distance transform, O(H W) for any radius)."""
    if not boundary.any():
        return np.zeros_like(boundary)
    return distance_transform_edt(~boundary) <= radius


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of binary ``[H, W]`` masks (davis ``f_measure``)."""
    pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fg, gb = boundary_map(pred), boundary_map(gt)
    fg_dil, gt_dil = _dilate(fg, pix), _dilate(gb, pix)
    n_fg, n_gt = int(fg.sum()), int(gb.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float(np.sum(fg & gt_dil)) / n_fg
        recall = float(np.sum(gb & fg_dil)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def object_statistics(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, recall, decay)`` of one object's per-frame values (davis ``db_statistics``:
    nanmean; share above 0.5; first minus last of four ``linspace`` bins)."""
    x = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(x))
        recall = float(np.nanmean(x > 0.5))
        ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.uint8)
        bins = [x[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def score_sequence(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH
) -> list[dict[str, Any]]:
    """Per-object J and F statistics of one sequence (semi-supervised task).

    Args:
        gt: ``[T, H, W]`` ground-truth object ids (255 = void, read as background).
        pred: ``[T, H, W]`` predicted object ids (frame 0 is ignored, as the last one).
        bound_th: boundary tolerance (:data:`BOUND_TH`).

    Returns:
        one dict per object id ``1 .. max(gt[0])``: ``object``, ``J`` / ``F`` (each
        ``{"mean", "recall", "decay"}``) and the per-frame ``J_frames`` / ``F_frames``.

    Raises:
        ValueError: shapes differ, or the prediction holds an id above the object count
            (the official code exits there).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    gt = np.where(gt == 255, 0, gt)
    num_objects = int(gt[0].max())
    gt, pred = gt[1:-1], pred[1:-1]
    if pred.size and int(pred.max()) > num_objects:
        raise ValueError(
            f"the prediction holds object id {int(pred.max())} but the first frame has only "
            f"{num_objects} objects"
        )
    rows = []
    for k in range(1, num_objects + 1):
        j = [region_j(g == k, p == k) for g, p in zip(gt, pred, strict=True)]
        f = [boundary_f(g == k, p == k, bound_th) for g, p in zip(gt, pred, strict=True)]
        stats = {
            name: dict(zip(("mean", "recall", "decay"), object_statistics(v), strict=True))
            for name, v in (("J", j), ("F", f))
        }
        rows.append({"object": k, **stats, "J_frames": j, "F_frames": f})
    return rows


def aggregate(per_sequence: Mapping[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Global DAVIS means over all objects pooled: ``J&F-Mean``, ``J-Mean``, ``J-Recall``,
    ``J-Decay``, ``F-Mean``, ``F-Recall``, ``F-Decay`` (``evaluation_method.py``)."""
    objects = [obj for rows in per_sequence.values() for obj in rows]
    if not objects:
        return {}
    out = {}
    for metric in ("J", "F"):
        for stat, label in (("mean", "Mean"), ("recall", "Recall"), ("decay", "Decay")):
            out[f"{metric}-{label}"] = float(np.mean([o[metric][stat] for o in objects]))
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return {"J&F-Mean": out.pop("J&F-Mean"), **out}
