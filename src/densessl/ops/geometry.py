"""Crop geometry shared by every dense method.

Conventions (used everywhere in densessl):

* A **box** is a float tensor ``[..., 4]`` holding ``(x1, y1, x2, y2)`` in continuous
  original-image pixel coordinates: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``,
  so the whole image of width W and height H is the box ``(0, 0, W, H)``. x is the column.
* A **crop** is described by its box in the original image and a horizontal ``flip`` flag.
  The crop is resized to some output frame of size ``(height, width)``: this can be its
  pixel size (e.g. 224x224) or its token grid (e.g. 14x14); the mapping is the same.
  A point ``(x, y)`` of the original image lands at
  ``u = (x - x1) / (x2 - x1) * width`` (mirrored to ``width - u`` when flipped) and
  ``v = (y - y1) / (y2 - y1) * height`` in that frame.
* Token grids are row-major: patch ``(r, c)`` of an ``h x w`` grid has index ``r * w + c``.

Every function follows the device and dtype of its inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

Size = tuple[int, int]

__all__ = [
    "align_to_intersection",
    "box_area",
    "box_intersection",
    "box_to_frame",
    "frame_to_image",
    "image_to_frame",
    "locate_points",
    "neighbour_table",
    "pairwise_intersections",
    "patch_centers",
    "relative_position_labels",
    "roi_align_grid",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of boxes ``[..., 4]`` (zero for empty or inverted boxes)."""
    width = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    height = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return width * height


def box_intersection(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection of two broadcastable box tensors.

    Returns:
        ``(boxes, nonempty)``: the intersection boxes ``[..., 4]`` and a bool mask ``[...]``
        that is True where the intersection has positive area. Empty intersections are
        returned as degenerate boxes (``x2 <= x1`` or ``y2 <= y1``).
    """
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    boxes = torch.cat([top_left, bottom_right], dim=-1)
    nonempty = (bottom_right > top_left).all(dim=-1)
    return boxes, nonempty


def pairwise_intersections(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Intersections between every pair of crops of each image.

    Args:
        boxes: ``[B, n, 4]`` crop boxes in image pixels.

    Returns:
        ``(inter [B, n, n, 4], nonempty [B, n, n])`` with ``inter[b, i, j]`` the intersection
        of crops ``i`` and ``j`` of image ``b``.
    """
    return box_intersection(boxes[:, :, None, :], boxes[:, None, :, :])


def _as_bool(flips: Tensor | bool | None, like: Tensor) -> Tensor:
    if flips is None:
        flips = False
    if not isinstance(flips, Tensor):
        flips = torch.tensor(bool(flips), device=like.device)
    return flips.to(device=like.device, dtype=torch.bool)


def image_to_frame(
    points: Tensor, crop_boxes: Tensor, frame: Size, flips: Tensor | bool | None = None
) -> Tensor:
    """Map image-pixel points ``[..., 2]`` (x, y) into a crop's frame of size ``(h, w)``.

    ``crop_boxes`` ``[..., 4]`` and ``flips`` ``[...]`` broadcast against the points' leading
    dimensions (add singleton dimensions for several points per crop).
    """
    height, width = frame
    x1, y1, x2, y2 = crop_boxes.unbind(-1)
    u = (points[..., 0] - x1) / (x2 - x1) * width
    v = (points[..., 1] - y1) / (y2 - y1) * height
    u = torch.where(_as_bool(flips, u), width - u, u)
    return torch.stack([u, v], dim=-1)


def frame_to_image(
    points: Tensor, crop_boxes: Tensor, frame: Size, flips: Tensor | bool | None = None
) -> Tensor:
    """Inverse of :func:`image_to_frame`: crop-frame points ``[..., 2]`` to image pixels."""
    height, width = frame
    x1, y1, x2, y2 = crop_boxes.unbind(-1)
    u = torch.where(_as_bool(flips, points[..., 0]), width - points[..., 0], points[..., 0])
    x = x1 + u / width * (x2 - x1)
    y = y1 + points[..., 1] / height * (y2 - y1)
    return torch.stack([x, y], dim=-1)


def box_to_frame(
    boxes: Tensor, crop_boxes: Tensor, frame: Size, flips: Tensor | bool | None = None
) -> Tensor:
    """Map image-pixel boxes ``[..., 4]`` into a crop's frame of size ``(h, w)``.

    With a flipped crop the box is mirrored and its corners are re-ordered, so the result
    always has ``x1 <= x2``. The mapped box describes the region *as laid out in the
    (flipped) crop*; :func:`roi_align_grid` flips its output back to image orientation.
    """
    top_left = image_to_frame(boxes[..., :2], crop_boxes, frame, flips)
    bottom_right = image_to_frame(boxes[..., 2:], crop_boxes, frame, flips)
    x_lo = torch.minimum(top_left[..., 0], bottom_right[..., 0])
    x_hi = torch.maximum(top_left[..., 0], bottom_right[..., 0])
    return torch.stack([x_lo, top_left[..., 1], x_hi, bottom_right[..., 1]], dim=-1)


def roi_align_grid(
    features: Tensor,
    boxes: Tensor,
    output_size: Size | int,
    flips: Tensor | bool | None = None,
    sampling_ratio: int = -1,
) -> Tensor:
    """Resample one box per image from a feature grid, in image orientation.

    Args:
        features: ``[B, C, h, w]`` per-token features (e.g. a token grid moved to channels
            first, or per-token probabilities).
        boxes: ``[B, 4]`` boxes in the grid's own frame (token units, see
            :func:`box_to_frame` with ``frame=(h, w)``).
        output_size: ``(oh, ow)`` or one int; Leopart uses 7x7.
        flips: ``[B]`` whether each grid comes from a flipped crop. Those outputs are
            mirrored horizontally so that column 0 is always the box's left side in the
            original image; two views of one region then align cell by cell.
        sampling_ratio: passed to :func:`torchvision.ops.roi_align` (-1: adaptive, as
            Leopart).

    Returns:
        ``[B, C, oh, ow]``. Uses ``aligned=True`` (pixel model: the grid cell ``j`` covers
        ``[j, j+1)``).
    """
    if features.dim() != 4 or boxes.shape != (features.shape[0], 4):
        raise ValueError(
            f"roi_align_grid expects features [B,C,h,w] and boxes [B,4]; got "
            f"{tuple(features.shape)} and {tuple(boxes.shape)}"
        )
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    batch_index = torch.arange(features.shape[0], device=features.device, dtype=boxes.dtype)
    rois = torch.cat([batch_index[:, None], boxes.to(features.dtype)], dim=1)
    out = roi_align(
        features, rois, output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    flips = _as_bool(flips, out)
    if flips.any():
        out = torch.where(flips.reshape(-1, 1, 1, 1), out.flip(-1), out)
    return out


def patch_centers(crop_boxes: Tensor, grid: Size, flips: Tensor | bool | None = None) -> Tensor:
    """Image-pixel coordinates of every patch centre of crops resized to a token grid.

    Args:
        crop_boxes: ``[..., 4]`` crop boxes.
        grid: ``(h, w)`` token grid of the crop.
        flips: ``[...]`` flip flags.

    Returns:
        ``[..., h, w, 2]`` (x, y) of the centre of each patch, in row-major grid order.
    """
    height, width = grid
    rows = torch.arange(height, device=crop_boxes.device, dtype=crop_boxes.dtype) + 0.5
    cols = torch.arange(width, device=crop_boxes.device, dtype=crop_boxes.dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    frame_points = torch.stack([u, v], dim=-1)  # [h, w, 2]
    extra = crop_boxes.dim() - 1
    frame_points = frame_points.reshape((1,) * extra + (height, width, 2))
    boxes = crop_boxes[..., None, None, :]
    flip_flags = _as_bool(flips, crop_boxes)
    if flip_flags.dim() > 0:
        flip_flags = flip_flags[..., None, None]
    return frame_to_image(frame_points, boxes, grid, flip_flags)


def locate_points(
    points: Tensor, crop_boxes: Tensor, grid: Size, flips: Tensor | bool | None = None
) -> Tensor:
    """Index of the grid cell of a crop that contains each image point.

    Args:
        points: ``[B, P, 2]`` image-pixel points.
        crop_boxes: ``[B, 4]`` crop boxes.
        grid: ``(h, w)`` token grid of the crop.
        flips: ``[B]`` flip flags.

    Returns:
        ``[B, P]`` long: ``row * w + col`` of the containing cell, or ``-1`` when the point
        falls outside the crop.
    """
    height, width = grid
    flip_flags = _as_bool(flips, crop_boxes)
    if flip_flags.dim() > 0:
        flip_flags = flip_flags[:, None]
    frame = image_to_frame(points, crop_boxes[:, None, :], grid, flip_flags)
    col = torch.floor(frame[..., 0])
    row = torch.floor(frame[..., 1])
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    index = (row * width + col).long()
    return torch.where(inside, index, torch.full_like(index, -1))


def relative_position_labels(
    query_boxes: Tensor,
    query_grid: Size,
    reference_boxes: Tensor,
    reference_grid: Size,
    query_flips: Tensor | bool | None = None,
    reference_flips: Tensor | bool | None = None,
) -> Tensor:
    """For every query patch, the reference-view patch its centre falls in (LOCA's labels).

    Args:
        query_boxes / reference_boxes: ``[B, 4]`` crop boxes in image pixels.
        query_grid / reference_grid: token grids ``(h, w)`` of each view.
        query_flips / reference_flips: ``[B]`` flip flags.

    Returns:
        ``[B, hq * wq]`` long: the row-major index into the reference grid, or ``-1`` where
        the query patch centre lies outside the reference crop.
    """
    centers = patch_centers(query_boxes, query_grid, query_flips)
    centers = centers.reshape(query_boxes.shape[0], -1, 2)
    return locate_points(centers, reference_boxes, reference_grid, reference_flips)


_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def neighbour_table(
    height: int, width: int, mode: str = "clip", device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """The 8 neighbours (3x3 window without the centre) of every patch of an h x w grid.

    Args:
        height, width: grid size; both must be at least 3 (SelfPatch needs 8 distinct
            neighbours in ``wrap`` mode, and a grid under 3x3 has no interior patch).
        mode: ``"clip"`` — neighbours outside the grid are missing (corner patches have 3,
            edge patches 5, the paper's "adjacent patches"); ``"wrap"`` — indices wrap
            around the borders like a torus (the official SelfPatch code).

    Returns:
        ``(index [h*w, 8], valid [h*w, 8])``: row-major neighbour indices in the fixed
        offset order (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1); missing
        neighbours (clip mode) hold the patch's own index and ``valid=False``.
    """
    if mode not in ("clip", "wrap"):
        raise ValueError(f"neighbour_table mode must be 'clip' or 'wrap', got {mode!r}")
    if height < 3 or width < 3:
        raise ValueError(
            f"neighbour_table needs a grid of at least 3x3 patches, got {height}x{width}; "
            "use larger crops or a smaller patch size"
        )
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    index, valid = [], []
    for dr, dc in _OFFSETS:
        r, c = rows + dr, cols + dc
        if mode == "wrap":
            ok = torch.ones_like(r, dtype=torch.bool)
            r, c = r % height, c % width
        else:
            ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        own = rows * width + cols
        index.append(torch.where(ok, r * width + c, own))
        valid.append(ok)
    return torch.stack(index, dim=1), torch.stack(valid, dim=1)


def align_to_intersection(
    features: Tensor,
    crop_boxes: Tensor,
    other_boxes: Tensor,
    flips: Tensor | None = None,
    output_size: int = 7,
) -> tuple[Tensor, Tensor]:
    """Resample every image's grid over the intersection of its crop with another crop.

    Args:
        features: ``[B, C, h, w]`` per-token values of one view (scores, probabilities,
            masks), channels first.
        crop_boxes: ``[B, 4]`` this view's crop boxes in image pixels.
        other_boxes: ``[B, 4]`` the other view's crop boxes.
        flips: ``[B]`` whether this view was flipped (None: no flips).
        output_size: side ``o`` of the output grid (Leopart and NeCo: 7).

    Returns:
        ``(aligned [B, C, o, o], nonempty [B])``: cell ``(i, j)`` of two views aligned against
        each other covers the same image region (image orientation). Where the crops do not
        intersect, the whole crop is resampled instead and ``nonempty`` is False.
    """
    height, width = features.shape[-2:]
    inter, nonempty = box_intersection(crop_boxes, other_boxes)
    inter = torch.where(nonempty[:, None], inter, crop_boxes)
    frame = box_to_frame(inter, crop_boxes, (height, width), flips)
    return roi_align_grid(features, frame, output_size, flips), nonempty
