"""LOCA's position labels and token masks, from the crop geometry of the multi-crop views
(:mod:`densessl.data.views.multicrop`).

Caron, Houlsby and Schmid, "Location-Aware Self-Supervised Transformers for Semantic
Segmentation", WACV 2024 (arXiv 2212.02400); official code google-research/scenic
@4a38d475 ``scenic/projects/loca`` (``ops.py``: the target maps, ``vit.py``:
``token_indexes_not_to_drop``).

**Labels.** Every patch of a query view is labelled with the patch of the reference view
it lies in (row-major index into the reference grid), or ``-1`` when it lies outside the
reference crop. Boxes follow :mod:`densessl.ops.geometry` (``(x1, y1, x2, y2)`` in image
pixels; views flip horizontally). Two rules (``rule``):

* ``"official"`` reproduces the official index maps exactly (pinned against its TF ops in
  the tests). The official pipeline writes the reference grid indices into an image-sized
  map (nearest resize of the ``Rh x Rw`` index grid to the reference crop's pixel size,
  ``-1`` outside), slices that map with each query box and resizes the slice with nearest
  twice: to the query's output size ``S`` and then to its token grid ``G``; a flipped
  query flips its ``G`` map. TF2 nearest resizing with half-pixel centres maps output
  index ``d`` of a resize from ``n_in`` to ``n_out`` to
  ``nn(d) = min(floor((d + 0.5) · n_in / n_out), n_in − 1)`` (float32), so query patch
  row ``i`` reads the image row ``y = y1_q + nn_{h_q←S}(nn_{S←G}(i))`` and gets the
  reference row ``nn_{Rh←h_r}(y − y1_r)`` when ``0 ≤ y − y1_r < h_r`` (columns alike).
  In words: the reference cell containing the centre of the image pixel that holds the
  centre of the query patch (ties broken towards the bottom-right). Exact for the
  integer boxes the views produce.
* ``"centre"``: the reference cell containing the exact centre of the query patch in
  continuous coordinates (:func:`densessl.ops.geometry.relative_position_labels`). It differs
  from ``"official"`` only for patches whose centre lies within about one image pixel of a
  reference cell border (there the two pick neighbouring cells).

**Token masks** (:func:`kept_token_indices`): ``"consecutive"`` keeps ``n`` tokens in
raster order from a random offset (the official reference mask), ``"unstructured"`` a random
subset (the official query0 dropping, in random order), ``"first"`` the first ``n``.
:func:`keyed_token_indices` draws the same distributions per image from each sample's key
(:mod:`densessl.ops.keyed_random`), so that they do not depend on the process holding it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densessl.ops.geometry import relative_position_labels
from densessl.ops.keyed_random import keyed_bits, keyed_randint

Size = tuple[int, int]

__all__ = [
    "LABEL_RULES",
    "SELECTIONS",
    "kept_token_indices",
    "keyed_token_indices",
    "loca_position_labels",
]

LABEL_RULES = ("official", "centre")
SELECTIONS = ("consecutive", "unstructured", "first")


def _nearest_source(dst: Tensor, n_in: Tensor | int, n_out: Tensor | int) -> Tensor:
    """TF2 nearest resize (half-pixel centres): the source index of output index ``dst``.

    Computed in float32 as the TF kernel does (``(d + 0.5f) * (float(n_in) / n_out)``), then
    floored and clamped to ``[0, n_in − 1]``. Broadcasts over all arguments.
    """
    n_in_f = torch.as_tensor(n_in, dtype=torch.float32, device=dst.device)
    n_out_f = torch.as_tensor(n_out, dtype=torch.float32, device=dst.device)
    scale = n_in_f / n_out_f
    src = torch.floor((dst.to(torch.float32) + 0.5) * scale)
    return torch.minimum(src, n_in_f - 1).clamp_min(0)


def _official_labels(
    query_boxes: Tensor,
    query_size: Size,
    query_grid: Size,
    reference_boxes: Tensor,
    reference_grid: Size,
    query_flips: Tensor,
    reference_flips: Tensor,
) -> Tensor:
    device = query_boxes.device
    gh, gw = query_grid
    rh, rw = reference_grid
    qx1, qy1, qx2, qy2 = query_boxes.to(torch.float64).unbind(-1)  # [B]
    rx1, ry1, rx2, ry2 = reference_boxes.to(torch.float64).unbind(-1)
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    # grid cell -> output pixel of the query crop -> offset in the crop's image pixels
    out_row = _nearest_source(rows, query_size[0], gh)
    out_col = _nearest_source(cols, query_size[1], gw)
    y = qy1[:, None] + _nearest_source(out_row[None], (qy2 - qy1)[:, None], query_size[0])
    x = qx1[:, None] + _nearest_source(out_col[None], (qx2 - qx1)[:, None], query_size[1])
    # a flipped query flips its grid map: column j holds the label of column gw - 1 - j
    x = torch.where(query_flips[:, None], x.flip(-1), x)
    dy, dx = y - ry1[:, None], x - rx1[:, None]  # [B, gh], [B, gw]
    ref_h, ref_w = (ry2 - ry1)[:, None], (rx2 - rx1)[:, None]
    row_in = (dy >= 0) & (dy < ref_h)
    col_in = (dx >= 0) & (dx < ref_w)
    ref_row = _nearest_source(dy.clamp_min(0), rh, ref_h).long()
    ref_col = _nearest_source(dx.clamp_min(0), rw, ref_w).long()
    ref_col = torch.where(reference_flips[:, None], rw - 1 - ref_col, ref_col)
    label = ref_row[:, :, None] * rw + ref_col[:, None, :]  # [B, gh, gw]
    inside = row_in[:, :, None] & col_in[:, None, :]
    return torch.where(inside, label, torch.full_like(label, -1)).flatten(1)


def _flags(flips: Tensor | bool | None, batch: int, device: torch.device) -> Tensor:
    if flips is None or isinstance(flips, bool):
        return torch.full((batch,), bool(flips), dtype=torch.bool, device=device)
    return flips.to(device=device, dtype=torch.bool).reshape(batch)


def loca_position_labels(
    query_boxes: Tensor,
    query_size: Size,
    query_grid: Size,
    reference_boxes: Tensor,
    reference_grid: Size,
    query_flips: Tensor | bool | None = None,
    reference_flips: Tensor | bool | None = None,
    rule: str = "official",
) -> Tensor:
    """The reference patch of every query patch (see the module docstring).

    Args:
        query_boxes / reference_boxes: ``[B, 4]`` crop boxes in image pixels.
        query_size: ``(S_h, S_w)`` pixel size the query crop was resized to (used by the
            ``"official"`` rule only).
        query_grid / reference_grid: token grids ``(h, w)`` of the two views.
        query_flips / reference_flips: ``[B]`` horizontal flip flags (None: no flips). The
            official reference is never flipped; a flipped one is handled the same way.
        rule: ``"official"`` or ``"centre"``.

    Returns:
        ``[B, hq * wq]`` long, row-major index into the reference grid or ``-1``.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"rule must be one of {LABEL_RULES}, got {rule!r}")
    if query_boxes.shape != reference_boxes.shape or query_boxes.dim() != 2:
        raise ValueError(
            f"expected query and reference boxes [B, 4], got {tuple(query_boxes.shape)} and "
            f"{tuple(reference_boxes.shape)}"
        )
    batch, device = query_boxes.shape[0], query_boxes.device
    q_flips = _flags(query_flips, batch, device)
    r_flips = _flags(reference_flips, batch, device)
    if rule == "centre":
        return relative_position_labels(
            query_boxes, query_grid, reference_boxes, reference_grid, q_flips, r_flips
        )
    return _official_labels(
        query_boxes, query_size, query_grid, reference_boxes, reference_grid, q_flips, r_flips
    )


def kept_token_indices(
    num_tokens: int,
    num_kept: int,
    selection: str,
    batch: int | None = None,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the tokens that survive masking.

    Args:
        num_tokens: tokens of the view (``h * w``).
        num_kept: tokens to keep (1 ≤ ``num_kept`` ≤ ``num_tokens``).
        selection: ``"consecutive"`` (raster-order run from a uniform offset in
            ``[0, num_tokens − num_kept]``), ``"unstructured"`` (uniform random subset, in
            random order) or ``"first"``.
        batch: None draws one index set for the whole batch (``[num_kept]``, the official
            behaviour: one draw per device batch); an int draws one per image
            (``[batch, num_kept]``).
        device: where the result goes (drawn on the CPU from ``generator``).
        generator: CPU random source (None: the global one, checkpointed by the trainer).

    Returns:
        long ``[num_kept]`` or ``[batch, num_kept]``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not 1 <= num_kept <= num_tokens:
        raise ValueError(f"num_kept must be in [1, {num_tokens}], got {num_kept}")
    rows = 1 if batch is None else batch
    if selection == "first":
        index = torch.arange(num_kept).expand(rows, -1)
    elif selection == "consecutive":
        offset = torch.randint(num_tokens - num_kept + 1, (rows, 1), generator=generator)
        index = offset + torch.arange(num_kept)
    else:
        index = torch.rand(rows, num_tokens, generator=generator).argsort(dim=1)[:, :num_kept]
    index = index if batch is not None else index[0]
    return index.contiguous().to(device) if device is not None else index.contiguous()


def keyed_token_indices(
    num_tokens: int, num_kept: int, selection: str, keys: Tensor, salt: int
) -> Tensor:
    """Per-image :func:`kept_token_indices` drawn from sample keys instead of a generator.

    Args:
        num_tokens / num_kept / selection: as :func:`kept_token_indices`.
        keys: ``[B]`` int64 sample keys (``batch["key"]``).
        salt: separates independent masks of one image (reference, random query).

    Returns:
        long ``[B, num_kept]`` on ``keys.device``; row ``i`` is a function of
        ``(keys[i], salt)`` only (:mod:`densessl.ops.keyed_random`), so it does not depend on the
        process or the other images of the batch. ``"consecutive"``: a uniform offset;
        ``"unstructured"``: the ``num_kept`` tokens with the smallest 32-bit hashes (a
        uniform subset in random order; ties, ~N²/2**33 per image, go to the lower index).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not 1 <= num_kept <= num_tokens:
        raise ValueError(f"num_kept must be in [1, {num_tokens}], got {num_kept}")
    if keys.dim() != 1:
        raise ValueError(f"keys must be [B], got {list(keys.shape)}")
    span = torch.arange(num_kept, device=keys.device)
    if selection == "first":
        return span.expand(keys.shape[0], -1).contiguous()
    if selection == "consecutive":
        return keyed_randint(keys, salt, num_tokens - num_kept + 1, 1) + span
    order = keyed_bits(keys, salt, num_tokens).argsort(dim=1, stable=True)
    return order[:, :num_kept].contiguous()
