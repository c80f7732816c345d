"""Multi-crop views: boxes, flips, determinism, rejection sampling, collate."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from densessl.data.views.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropDataset,
    MultiCropViews,
    ViewsConfig,
    collate_views,
    group_by_resolution,
    sample_crop_box,
    sample_generator,
)
from densessl.data.views.photometric import PhotometricConfig, augment_photometric
from densessl.ops.geometry import box_area, box_intersection


def _image(h: int = 120, w: int = 160, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _small_config(**kw) -> ViewsConfig:
    base = dict(num_global=2, global_size=32, num_local=3, local_size=16)
    base.update(kw)
    return ViewsConfig(**base)


def test_views_shapes_boxes_inside_image():
    views = MultiCropViews(_small_config())
    out = views(_image(), torch.Generator().manual_seed(1))
    assert [tuple(c.shape) for c in out["crops"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert out["boxes"].shape == (5, 4) and out["flips"].shape == (5,)
    boxes = out["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert out["image_size"].tolist() == [120, 160]


def test_views_deterministic_for_same_generator_seed():
    views = MultiCropViews(_small_config())
    a = views(_image(), torch.Generator().manual_seed(7))
    b = views(_image(), torch.Generator().manual_seed(7))
    c = views(_image(), torch.Generator().manual_seed(8))
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["flips"], b["flips"])
    assert all(torch.equal(x, y) for x, y in zip(a["crops"], b["crops"], strict=True))
    assert not torch.equal(a["boxes"], c["boxes"])


def test_crop_content_matches_box_and_flip_without_photometric():
    cfg = _small_config(flip_prob=0.5, photometric=PhotometricConfig(enabled=False))
    views = MultiCropViews(cfg)
    image = _image()
    seen_flip = {False: 0, True: 0}
    for seed in range(12):
        out = views(image, torch.Generator().manual_seed(seed))
        for crop, box, flip, size in zip(
            out["crops"], out["boxes"], out["flips"], cfg.view_sizes(), strict=True
        ):
            x1, y1, x2, y2 = (int(v) for v in box.tolist())
            ref = TF.resized_crop(
                image,
                y1,
                x1,
                y2 - y1,
                x2 - x1,
                [size, size],
                InterpolationMode.BICUBIC,
                antialias=True,
            )
            if flip:
                ref = TF.horizontal_flip(ref)
            ref = TF.normalize(TF.to_dtype(ref, torch.float32, scale=True), cfg.mean, cfg.std)
            assert torch.allclose(crop, ref, atol=1e-5)
            seen_flip[bool(flip)] += 1
    assert seen_flip[True] > 0 and seen_flip[False] > 0


def test_no_flips_when_flip_prob_zero():
    views = MultiCropViews(_small_config(flip_prob=0.0))
    for seed in range(5):
        assert not views(_image(), torch.Generator().manual_seed(seed))["flips"].any()


def test_rejection_sampling_enforces_min_overlap():
    cfg = _small_config(min_overlap=0.1, num_local=4, local_scale=(0.05, 0.2))
    views = MultiCropViews(cfg)
    area = 120 * 160
    for seed in range(20):
        boxes = views.sample_boxes(120, 160, torch.Generator().manual_seed(seed))
        boxes_t = torch.tensor(boxes, dtype=torch.float32)
        inter, _ = box_intersection(boxes_t[1], boxes_t[0])
        assert float(box_area(inter)) > 2 * 0.1 * area  # second global: doubled threshold
        for k in range(2, len(boxes)):
            for g in range(2):
                inter, _ = box_intersection(boxes_t[k], boxes_t[g])
                assert float(box_area(inter)) > 0.1 * area


def test_sample_crop_box_scale_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x1, y1, x2, y2 = sample_crop_box(100, 200, (0.3, 0.5), (3 / 4, 4 / 3), g)
        frac = (x2 - x1) * (y2 - y1) / (100 * 200)
        assert 0.25 < frac < 0.55
    # A 1x1 image can only be cropped to itself.
    assert sample_crop_box(1, 1, (0.05, 0.4), (3 / 4, 4 / 3), g) == (0, 0, 1, 1)


def test_tiny_image_upsamples_into_crops():
    views = MultiCropViews(_small_config())
    out = views(_image(3, 5), torch.Generator().manual_seed(0))
    assert out["crops"][0].shape == (3, 32, 32)


def test_views_reject_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        MultiCropViews(_small_config())(torch.zeros(3, 10, 10), torch.Generator())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(local_size=64), "local_size"),
        (dict(global_scale=(0.5, 0.2)), "global_scale"),
        (dict(num_global=0), "num_global"),
        (dict(interpolation="nearest"), "interpolation"),
    ],
)
def test_views_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        _small_config(**kw)


def test_photometric_kinds_and_range():
    cfg = PhotometricConfig(blur_prob=(1.0, 0.0, 0.0), solarize_prob=(0.0, 1.0, 0.0))
    crop = _image(16, 16)
    g = torch.Generator().manual_seed(0)
    for kind in ("global1", "global2", "local"):
        out = augment_photometric(crop, cfg, kind, g)
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    # Solarize with p=1 on an all-white crop and no jitter inverts it.
    white = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    cfg2 = PhotometricConfig(
        jitter_prob=0, grayscale_prob=0, blur_prob=(0, 0, 0), solarize_prob=(0, 1, 0)
    )
    assert torch.allclose(augment_photometric(white, cfg2, "global2", g), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="kind"):
        augment_photometric(white, cfg2, "medium", g)


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return {"image": _image(40 + i, 50, seed=i)}


def test_dataset_epochs_and_collate_and_groups():
    ds = MultiCropDataset(_Images(), MultiCropViews(_small_config()), seed=3)
    first = ds[2]
    assert torch.equal(first["boxes"], ds[2]["boxes"])  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(first["boxes"], ds[2]["boxes"])
    batch = collate_views([ds[i] for i in range(4)])
    assert len(batch["crops"]) == 5 and batch["crops"][0].shape == (4, 3, 32, 32)
    assert batch["boxes"].shape == (4, 5, 4) and batch["flips"].shape == (4, 5)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    groups = group_by_resolution(batch["crops"])
    assert [g[0] for g in groups] == [[0, 1], [2, 3, 4]]
    assert groups[0][1].shape == (8, 3, 32, 32) and groups[1][1].shape == (12, 3, 16, 16)
    assert torch.equal(groups[1][1][4:8], batch["crops"][3])


def test_sample_generator_depends_on_all_inputs():
    def draw(*a: int) -> float:
        return float(torch.rand((), generator=sample_generator(*a)))

    assert draw(0, 0, 0) == draw(0, 0, 0)
    assert len({draw(0, 0, 0), draw(1, 0, 0), draw(0, 1, 0), draw(0, 0, 1)}) == 4


def test_first_crop_flip_can_be_disabled():
    """LOCA's reference view is never flipped (``flip_first=False``); the others still are."""
    cfg = ViewsConfig(num_global=2, global_size=16, num_local=1, local_size=8, flip_prob=1.0,
                      flip_first=False)  # fmt: skip
    out = MultiCropViews(cfg)(torch.zeros(3, 40, 40, dtype=torch.uint8), torch.Generator())
    assert out["flips"].tolist() == [False, True, True]
    assert ViewsConfig().flip_first  # the other methods keep flipping their first crop


def test_local_photometric_applies_to_local_crops_only():
    off = PhotometricConfig(enabled=False)
    gray = PhotometricConfig(jitter_prob=0.0, grayscale_prob=1.0, blur_prob=(0, 0, 0))
    image = _image()
    plain = MultiCropViews(_small_config(photometric=off))
    split = MultiCropViews(_small_config(photometric=off, local_photometric=gray))
    a = plain(image, torch.Generator().manual_seed(3))
    b = split(image, torch.Generator().manual_seed(3))
    assert torch.equal(a["boxes"], b["boxes"])  # geometry draws are unchanged
    for k, (x, y) in enumerate(zip(a["crops"], b["crops"], strict=True)):
        if k < 2:  # global crops: the main settings (off)
            assert torch.equal(x, y)
        else:  # local crops: grayscale, so the three unnormalised channels agree
            raw = y * torch.tensor(IMAGENET_STD)[:, None, None]
            raw = raw + torch.tensor(IMAGENET_MEAN)[:, None, None]
            assert not torch.equal(x, y)
            assert torch.allclose(raw[0], raw[1], atol=1e-5)
            assert torch.allclose(raw[1], raw[2], atol=1e-5)
