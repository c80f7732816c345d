"""Keypoint transfer by nearest-neighbour patch features, and its PCK error.

The computation of Probe3D's SPair-71k evaluation (El Banani et al., "Probing the 3D
Awareness of Visual Foundation Models", CVPR 2024; mbanani/probe3d @a1f1464,
evaluate_spair_correspondence.py ``compute_errors``, evals/utils/correspondence.py
``argmax_2d``), written for densessl and pinned to it in
``tests/evaluation/test_correspondence.py``. All coordinates are pixels ``(x, y)`` of the
square network input of side ``S``:

1. Patch features ``[D, h, w]`` of both images, L2-normalised over channels.
2. Each source keypoint's feature is sampled bilinearly from the source grid at
   ``2 * kp / S - 1`` with ``align_corners=True`` (Probe3D; ``align_corners=False`` puts the
   grid's cells at their pixel positions instead).
3. Cosine similarity with every target patch; the argmax cell ``(col, row)`` is the
   prediction at ``cell * S / w`` (``"corner"``: Probe3D, the cell's top-left corner) or at
   ``(cell + 0.5) * S / w`` (``"centre"``). ``soft_argmax`` takes the softmax-weighted mean
   of the cell positions instead (temperature on cosine similarities).
4. Error = distance to the true target keypoint; a keypoint is correct when
   ``error < alpha * threshold`` (strictly, as Probe3D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PREDICT_AT", "keypoint_features", "pck", "predict_keypoints"]

PREDICT_AT = ("corner", "centre")


def keypoint_features(
    feats: Tensor, keypoints: Tensor, image_size: int, align_corners: bool = True
) -> Tensor:
    """``[K, D]`` features at ``keypoints`` ``[K, 2]`` (x, y pixels of the ``image_size``
    square input), bilinear on the ``[D, h, w]`` grid (zero outside it)."""
    grid = (keypoints.float() / image_size * 2 - 1).view(1, 1, -1, 2).to(feats)
    sampled = F.grid_sample(feats[None], grid, mode="bilinear", align_corners=align_corners)
    return sampled[0, :, 0].t()


def predict_keypoints(
    query: Tensor,
    feats: Tensor,
    image_size: int,
    predict_at: str = "corner",
    soft_argmax: bool = False,
    temperature: float = 0.04,
) -> Tensor:
    """Target positions ``[K, 2]`` (x, y pixels) of ``query`` features ``[K, D]`` on the
    target grid ``[D, h, w]``: the most similar cell (or the soft-argmax)."""
    _, h, w = feats.shape
    sims = torch.einsum("kd,dhw->khw", query, feats).reshape(len(query), h * w)
    offset = 0.5 if predict_at == "centre" else 0.0
    cols = torch.arange(w, device=feats.device).repeat(h).float()
    rows = torch.arange(h, device=feats.device).repeat_interleave(w).float()
    if soft_argmax:
        weights = torch.softmax(sims / temperature, dim=1)
        xy = torch.stack([weights @ cols, weights @ rows], dim=1)
    else:
        best = sims.argmax(dim=1)
        xy = torch.stack([cols[best], rows[best]], dim=1)
    return (xy + offset) * (image_size / w)


def pck(errors: Tensor, thresholds: Tensor, alpha: float = 0.1) -> Tensor:
    """Boolean ``[K]``: ``errors < alpha * thresholds`` (both in pixels)."""
    return errors < alpha * thresholds
