"""Exact tests of the crop-geometry toolkit on hand-built cases."""

from __future__ import annotations

import pytest
import torch

from densessl.ops.geometry import (
    box_area,
    box_intersection,
    box_to_frame,
    frame_to_image,
    image_to_frame,
    locate_points,
    neighbour_table,
    pairwise_intersections,
    patch_centers,
    relative_position_labels,
    roi_align_grid,
)


def test_box_area_and_intersection():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([5.0, 2.0, 20.0, 8.0])
    inter, ok = box_intersection(a, b)
    assert inter.tolist() == [5.0, 2.0, 10.0, 8.0] and bool(ok)
    assert float(box_area(inter)) == 30.0
    _, ok = box_intersection(a, torch.tensor([10.0, 0.0, 12.0, 3.0]))  # touching edge only
    assert not bool(ok)
    assert float(box_area(torch.tensor([3.0, 3.0, 1.0, 5.0]))) == 0.0


def test_pairwise_intersections_shape_and_symmetry():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]]])
    inter, ok = pairwise_intersections(boxes)
    assert inter.shape == (1, 3, 3, 4)
    assert inter[0, 0, 1].tolist() == [5, 5, 10, 10] == inter[0, 1, 0].tolist()
    assert ok[0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]


@pytest.mark.parametrize("flip", [False, True])
def test_image_frame_roundtrip(flip):
    crop = torch.tensor([10.0, 20.0, 50.0, 100.0])
    points = torch.tensor([[10.0, 20.0], [50.0, 100.0], [30.0, 60.0]])
    frame = image_to_frame(points, crop, (8, 4), flip)
    expected_u = [0.0, 4.0, 2.0] if not flip else [4.0, 0.0, 2.0]
    assert frame[:, 0].tolist() == expected_u
    assert frame[:, 1].tolist() == [0.0, 8.0, 4.0]
    assert torch.allclose(frame_to_image(frame, crop, (8, 4), flip), points)


def test_box_to_frame_flip_keeps_order():
    crop = torch.tensor([0.0, 0.0, 100.0, 100.0])
    box = torch.tensor([10.0, 20.0, 30.0, 40.0])
    plain = box_to_frame(box, crop, (10, 10), False)
    flipped = box_to_frame(box, crop, (10, 10), True)
    assert plain.tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert flipped.tolist() == pytest.approx([7.0, 2.0, 9.0, 4.0])


def test_patch_centers_plain_and_flipped():
    crop = torch.tensor([[0.0, 0.0, 32.0, 16.0], [0.0, 0.0, 32.0, 16.0]])
    centers = patch_centers(crop, (2, 4), torch.tensor([False, True]))
    assert centers.shape == (2, 2, 4, 2)
    assert centers[0, 0, :, 0].tolist() == [4.0, 12.0, 20.0, 28.0]
    assert centers[1, 0, :, 0].tolist() == [28.0, 20.0, 12.0, 4.0]
    assert centers[0, :, 0, 1].tolist() == [4.0, 12.0]


def _coordinate_features(box: torch.Tensor, grid: tuple[int, int], flip: bool) -> torch.Tensor:
    """The 'coordinate encoder': each patch's feature is its centre's (x, y) image coords."""
    return patch_centers(box, grid, flip).permute(2, 0, 1)  # [2, h, w]


@pytest.mark.parametrize(
    ("flip_a", "flip_b"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_coordinate_roi_align_agrees_across_crops(flip_a, flip_b):
    """Roi-aligned coordinates of one intersection seen from two crops agree (half a patch).

    Crop A is a 'global' view (14x14 tokens of a 224 px crop = patch 16), crop B a 'local'
    view (6x6 tokens of a 96 px crop); their boxes have different sizes and aspect ratios.
    """
    box_a = torch.tensor([30.0, 40.0, 230.0, 200.0])
    box_b = torch.tensor([120.0, 90.0, 260.0, 250.0])
    grid_a, grid_b = (14, 14), (6, 6)
    inter, ok = box_intersection(box_a, box_b)
    assert bool(ok)
    out_a = roi_align_grid(
        _coordinate_features(box_a, grid_a, flip_a)[None],
        box_to_frame(inter, box_a, grid_a, flip_a)[None],
        7,
        torch.tensor([flip_a]),
    )
    out_b = roi_align_grid(
        _coordinate_features(box_b, grid_b, flip_b)[None],
        box_to_frame(inter, box_b, grid_b, flip_b)[None],
        7,
        torch.tensor([flip_b]),
    )
    # Ground truth: centres of a 7x7 split of the intersection box, in image pixels.
    truth = patch_centers(inter, (7, 7)).permute(2, 0, 1)
    patch_a = (box_a[2] - box_a[0]) / grid_a[1]  # image pixels per token of each view
    patch_b = (box_b[2] - box_b[0]) / grid_b[1]
    half_patch = 0.5 * max(float(patch_a), float(patch_b))
    assert (out_a[0] - truth).abs().max() <= 0.5 * float(patch_a) + 1e-4
    assert (out_b[0] - truth).abs().max() <= 0.5 * float(patch_b) + 1e-4
    assert (out_a[0] - out_b[0]).abs().max() <= half_patch + 1e-4
    # Away from the crop borders bilinear sampling of a linear field is exact.
    interior = (slice(None), slice(2, 5), slice(2, 5))
    assert torch.allclose(out_a[0][interior], truth[interior], atol=1e-3)


def test_roi_align_flip_mirrors_output():
    feats = torch.arange(16.0).reshape(1, 1, 4, 4)
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    plain = roi_align_grid(feats, box, 4, sampling_ratio=1)
    flipped = roi_align_grid(feats, box, 4, torch.tensor([True]), sampling_ratio=1)
    assert torch.equal(plain, feats)
    assert torch.equal(flipped, feats.flip(-1))


def test_roi_align_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        roi_align_grid(torch.zeros(2, 3, 4, 4), torch.zeros(3, 4), 2)


def test_locate_points_inside_outside_and_flip():
    crop = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    pts = torch.tensor([[[4.0, 4.0], [63.9, 0.5], [20.0, 40.0], [70.0, 10.0], [-1.0, 3.0]]])
    idx = locate_points(pts, crop, (8, 8))
    assert idx.tolist() == [[0, 7, 5 * 8 + 2, -1, -1]]
    flipped = locate_points(pts, crop, (8, 8), torch.tensor([True]))
    assert flipped.tolist() == [[7, 0, 5 * 8 + 5, -1, -1]]


def test_relative_position_labels_hand_built():
    reference = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # 8x8 grid, 8 image px per patch
    query = torch.tensor([[16.0, 16.0, 48.0, 48.0]])  # 4x4 grid, centres at 20, 28, 36, 44
    labels = relative_position_labels(query, (4, 4), reference, (8, 8))
    expected = [r * 8 + c for r in range(2, 6) for c in range(2, 6)]
    assert labels.tolist() == [expected]
    # A query hanging over the reference's right border: outside centres get -1.
    query2 = torch.tensor([[48.0, 0.0, 80.0, 32.0]])
    labels2 = relative_position_labels(query2, (4, 4), reference, (8, 8))
    row0 = labels2[0, :4].tolist()
    assert row0 == [6, 7, -1, -1]
    # Different query size (2x2 grid of 16 px patches) and a flipped query.
    labels3 = relative_position_labels(
        query, (2, 2), reference, (8, 8), query_flips=torch.tensor([True])
    )
    assert labels3.tolist() == [[3 * 8 + 5, 3 * 8 + 3, 5 * 8 + 5, 5 * 8 + 3]]


def test_relative_position_labels_at_image_border_with_different_resolutions():
    # Reference 96x96 box at the image's bottom-right border of a 100x100 image, 12x12 grid.
    reference = torch.tensor([[4.0, 4.0, 100.0, 100.0]])
    query = torch.tensor([[52.0, 52.0, 100.0, 100.0]])  # 48 px box, 6x6 grid (8 px patches)
    labels = relative_position_labels(query, (6, 6), reference, (12, 12))
    # Query centre x = 56 + 8c ; reference col = floor((x - 4) / 8) = 6 + c.
    expected = [(6 + r) * 12 + 6 + c for r in range(6) for c in range(6)]
    assert labels.tolist() == [expected]


def test_neighbour_table_clip_counts():
    index, valid = neighbour_table(5, 4, "clip")
    assert index.shape == (20, 8)
    counts = valid.sum(1).reshape(5, 4)
    assert counts[0, 0] == counts[0, 3] == counts[4, 0] == counts[4, 3] == 3  # corners
    assert counts[0, 1] == counts[2, 0] == counts[4, 2] == counts[1, 3] == 5  # edges
    assert (counts[1:4, 1:3] == 8).all()  # interior
    # Interior patch (2, 1) = 9: its neighbours in offset order.
    assert index[9].tolist() == [4, 5, 6, 8, 10, 12, 13, 14]
    # Corner 0: valid neighbours are 1, 4, 5; missing ones point to itself.
    assert sorted(index[0][valid[0]].tolist()) == [1, 4, 5]
    assert set(index[0][~valid[0]].tolist()) == {0}


def test_neighbour_table_wrap_matches_official_example():
    index, valid = neighbour_table(4, 4, "wrap")
    assert valid.all()
    assert sorted(index[0].tolist()) == [1, 3, 4, 5, 7, 12, 13, 15]
    # Edge patch 1 of a 4x4 torus.
    assert sorted(index[1].tolist()) == [0, 2, 4, 5, 6, 12, 13, 14]
    # Every patch has 8 distinct neighbours, none of them itself.
    for i in range(16):
        assert len(set(index[i].tolist())) == 8 and i not in index[i].tolist()


def test_neighbour_table_rejects_small_grids_and_bad_mode():
    with pytest.raises(ValueError, match="3x3"):
        neighbour_table(2, 5)
    with pytest.raises(ValueError, match="mode"):
        neighbour_table(3, 3, "reflect")
