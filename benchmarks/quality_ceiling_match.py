"""The ``supervised-match`` ceiling of the quality benchmark's PCK@0.1 column.

Trained on ground-truth correspondences (the label PCK measures), by the loop of
``quality_ceilings.py``. Each item is two views of one training scene, each drawn by the
supervised row's crop rule (:mod:`densessl.train.supervised`: a RandomResizedCrop box of
area ``crop_scale``, aspect ``RATIO``, resized to ``crop_size``, flipped with p = 0.5), with
fresh boxes every step. ``MATCH_POINTS`` scene points drawn uniformly in the boxes'
intersection are mapped exactly into both views (pixel centres at +0.5, as
:mod:`densessl.data.keypoints.scenes` maps the eval pairs' keypoints). As the correspondence
protocol reads a source keypoint, a point's query is the bilinear sample of the
L2-normalised patch grid (``align_corners=True``,
:func:`densessl.evaluation.correspondence.matching.keypoint_features`); its logits are the
cosine similarities to every patch of the other view over ``MATCH_TEMPERATURE``;
cross-entropy (InfoNCE) with the patch that contains the point as the positive and every
other patch of that view as the negatives, in both directions (mean of the two).

All draws of a step come from :func:`match_generator` ``(seed, step)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.evaluation.preprocess import normalize, resize_image, sample_crop_box
from densessl.models.vit import ViTBackbone
from densessl.train.precision import autocast
from densessl.train.supervised import SupervisedConfig

#: InfoNCE temperature on the cosine similarities (a common InfoNCE value, stated once and
#: not tuned).
MATCH_TEMPERATURE = 0.1
#: Scene points per view pair.
MATCH_POINTS = 32
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range of the supervised crop rule
CROPS_PER_ITEM = 2


def constants() -> dict[str, Any]:
    """The row's fixed constants (in its spec and its checkpoint's identity)."""
    return {"temperature": MATCH_TEMPERATURE, "points": MATCH_POINTS, "ratio": RATIO}


def match_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of a ``supervised-match`` step (its own stream,
    apart from the supervised row's ``(seed, step)`` crops)."""
    return torch.Generator().manual_seed(((seed + 1) * 1_000_003 + step) * 64 + 29)


def _view_box(
    h: int, w: int, config: SupervisedConfig, gen: torch.Generator
) -> tuple[int, int, int, int, bool]:
    top, left, bh, bw = sample_crop_box(h, w, config.crop_scale, RATIO, gen)
    return top, left, bh, bw, bool(torch.rand((), generator=gen) < 0.5)


def to_view(xy: Tensor, box: tuple, size: int) -> Tensor:
    """Scene pixel coordinates ``[P, 2]`` (x, y) -> coordinates in the ``size`` view of
    ``box = (top, left, h, w, flip)`` (mirrored to ``size - u`` when flipped)."""
    top, left, h, w, flip = box
    uv = (xy - torch.tensor([left, top], dtype=xy.dtype)) * torch.tensor([size / w, size / h])
    if flip:
        uv[:, 0] = size - uv[:, 0]
    return uv


def match_batch(
    dataset: Any, config: SupervisedConfig, step: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``views [2, B, 3, S, S]`` and the points ``[2, B, P, 2]`` (x, y view pixels) of
    ``MATCH_POINTS`` scene points in both views; ``valid [B]`` is False for the rare pair
    whose boxes never intersect in 20 draws (left out of the loss), ``images`` normalised."""
    gen = match_generator(config.seed, step)
    indices = torch.randint(0, len(dataset), (config.batch_size,), generator=gen).tolist()
    size = config.crop_size
    views: list[list[Tensor]] = [[], []]
    points: list[list[Tensor]] = [[], []]
    valid = []
    for index in indices:
        image = dataset[index]["image"]
        h, w = image.shape[-2:]
        for _ in range(20):
            boxes = [_view_box(h, w, config, gen) for _ in range(2)]
            y0 = max(b[0] for b in boxes)
            x0 = max(b[1] for b in boxes)
            y1 = min(b[0] + b[2] for b in boxes)
            x1 = min(b[1] + b[3] for b in boxes)
            if x1 > x0 and y1 > y0:
                break
        valid.append(x1 > x0 and y1 > y0)
        u = torch.rand(MATCH_POINTS, 2, generator=gen, dtype=torch.float64)
        lo = torch.tensor([x0, y0], dtype=torch.float64)
        span = torch.tensor([max(x1 - x0, 0), max(y1 - y0, 0)], dtype=torch.float64)
        xy = lo + u * span
        for k, (top, left, bh, bw, flip) in enumerate(boxes):
            view = resize_image(image[:, top : top + bh, left : left + bw], size)
            views[k].append(normalize(view.flip(-1) if flip else view))
            points[k].append(to_view(xy, boxes[k], size).float())
    return (
        torch.stack([torch.stack(v) for v in views]),
        torch.stack([torch.stack(p) for p in points]),
        torch.tensor(valid),
        torch.tensor(indices),
    )


def match_logits(source: Tensor, target: Tensor, points: Tensor, size: int) -> Tensor:
    """``[B, P, h*w]`` cosine similarities / ``MATCH_TEMPERATURE`` of the source features at
    ``points [B, P, 2]`` (bilinear, ``align_corners=True``, as the protocol samples a source
    keypoint) to every target patch; ``source`` / ``target`` L2-normalised ``[B, D, h, w]``."""
    grid = (points / size * 2 - 1)[:, :, None, :].to(source)  # [B, P, 1, 2]
    query = F.grid_sample(source, grid, mode="bilinear", align_corners=True)[..., 0]
    return torch.einsum("bdp,bdn->bpn", query, target.flatten(2)) / MATCH_TEMPERATURE


def cell_index(points: Tensor, size: int, grid: tuple[int, int]) -> Tensor:
    """``[B, P]`` row-major index of the patch containing each point ``[B, P, 2]``."""
    h, w = grid
    col = (points[..., 0] * w / size).floor().long().clamp(0, w - 1)
    row = (points[..., 1] * h / size).floor().long().clamp(0, h - 1)
    return row * w + col


class PatchMatcher(nn.Module):
    """The backbone's L2-normalised patch grid ``[B, D, h, w]``."""

    def __init__(self, backbone: ViTBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.tokens(images)[1].permute(0, 3, 1, 2).float(), dim=1)


def step_loss(
    model: nn.Module, dataset: Any, config: SupervisedConfig, step: int,
    device: torch.device, dtype: torch.dtype | None,
) -> tuple[Tensor, int, int]:  # fmt: skip
    """``(loss, matched points, points)`` of ``step`` (top-1 match = the positive patch)."""
    views, points, valid, _ = match_batch(dataset, config, step)
    size = config.crop_size
    batch = views.shape[1]
    with autocast(device, dtype):
        feats = model(views.flatten(0, 1).to(device))  # [2B, D, h, w]
    feats = feats.float().unflatten(0, (2, batch))
    grid = (feats.shape[-2], feats.shape[-1])
    points, valid = points.to(device), valid.to(device)
    if not bool(valid.any()):  # no pair of boxes intersected: a zero loss keeps the graph
        return feats.sum() * 0.0, 0, 0
    losses, correct, counted = [], 0, 0
    for a, b in ((0, 1), (1, 0)):
        logits = match_logits(feats[a], feats[b], points[a], size)[valid]  # [V, P, h*w]
        target = cell_index(points[b], size, grid)[valid]
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()))
        correct += int((logits.argmax(-1) == target).sum())
        counted += target.numel()
    return sum(losses) / 2, correct, counted


def build(backbone: ViTBackbone, dataset: Any) -> nn.Module:
    """The trained module: the backbone's normalised patch grid (no head)."""
    return PatchMatcher(backbone)
