"""Labeled datasets on tiny on-disk fixtures: layouts, id mappings, splits and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.scenes.dataset import SyntheticScenes, write_scenes
from densessl.data.segmentation.ade20k import ADE20K, ADE20K_CLASSES
from densessl.data.segmentation.coco import (
    STUFF_SUPERCATEGORIES,
    THING_SUPERCATEGORIES,
    COCOStuff,
    COCOThings,
)
from densessl.data.segmentation.registry import build_segmentation_dataset, dataset_names
from densessl.data.segmentation.scene_folder import SceneFolder
from densessl.data.segmentation.voc import VOC_CLASSES, VOCSegmentation

H, W = 6, 8


def save_jpg(path: Path, size: tuple[int, int] = (H, W), exif_orientation: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if exif_orientation is None:
        im.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, quality=95, exif=exif)


def save_png(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), "L")
    if palette:  # VOC style: indices + a colour palette
        im = im.convert("P")
        pal = np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)
        im.putpalette(pal.tolist())
    im.save(path)


def ids_map(values: list[int]) -> np.ndarray:
    """H x W map cycling through ``values`` (every value appears)."""
    flat = np.resize(np.asarray(values, dtype=np.int64), H * W)
    return flat.reshape(H, W)


# ----------------------------------------------------------------------------- VOC
def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    for i, stem in enumerate(["2007_000001", "2007_000002", "2007_000003"]):
        save_jpg(voc / "JPEGImages" / f"{stem}.jpg")
        label = ids_map([0, 15, 20, i])
        label[0, :] = 255  # boundary
        save_png(voc / "SegmentationClass" / f"{stem}.png", label, palette=True)
        save_png(voc / "SegmentationClassAug" / f"{stem}.png", np.full((H, W), 7))
    (seg / "train.txt").write_text("2007_000001\n2007_000002\n")
    (seg / "val.txt").write_text("2007_000003\n")
    (seg / "trainaug.txt").write_text(
        "/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
        "/JPEGImages/2007_000003.jpg /SegmentationClassAug/2007_000003.png\n"
    )
    return voc


def test_voc_palette_indices_and_splits(tmp_path):
    voc = make_voc(tmp_path)
    ds = VOCSegmentation(voc, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.ignore_index == 255
    assert ds.class_names == list(VOC_CLASSES) and ds.class_names[15] == "person"
    item = ds[1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
    assert item["label"].dtype == torch.uint8 and item["label"].shape == (H, W)
    assert item["index"] == 1
    expected = ids_map([0, 15, 20, 1])
    expected[0, :] = 255
    assert np.array_equal(item["label"].numpy(), expected)  # indices, not palette colours
    assert len(VOCSegmentation(voc, "val")) == 1
    aug = VOCSegmentation(voc, "trainaug")  # DeepLab-style list, SegmentationClassAug labels
    assert aug.stems == ["2007_000001", "2007_000003"]
    assert int(aug[0]["label"].unique()) == 7
    # root may be VOCdevkit/ (holding VOC2012/)
    assert len(VOCSegmentation(tmp_path / "VOCdevkit", "train")) == 2


def test_voc_leopart_layout(tmp_path):
    root = tmp_path / "data" / "VOCSegmentation"
    for stem in ("a", "b"):
        save_jpg(root / "images" / f"{stem}.jpg")
        save_png(root / "SegmentationClass" / f"{stem}.png", np.full((H, W), 3))
        save_png(root / "SegmentationClassAug" / f"{stem}.png", np.full((H, W), 4))
    (root / "sets").mkdir()
    (root / "sets" / "trainaug.txt").write_text("a\nb\n")
    (root / "sets" / "val.txt").write_text("b\n")
    train = VOCSegmentation(tmp_path / "data", "trainaug")
    assert train.layout == "leopart" and len(train) == 2 and int(train[0]["label"][0, 0]) == 4
    assert int(VOCSegmentation(root, "val")[0]["label"][0, 0]) == 3  # val: SegmentationClass


def test_voc_errors(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: ROOT/ImageSets/Segmentation/val\.txt"):
        VOCSegmentation(voc, "val")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "nothing_here", "val")
    (voc / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2007_000002\.png"):
        VOCSegmentation(voc, "train")
    save_png(voc / "SegmentationClass" / "2007_000002.png", ids_map([0, 21]))
    with pytest.raises(ValueError, match=r"2007_000002\.png holds ids \[21\]"):
        VOCSegmentation(voc, "train")[1]
    save_png(voc / "SegmentationClass" / "2007_000002.png", np.zeros((H + 1, W)))
    ds = VOCSegmentation(voc, "train")
    with pytest.raises(ValueError, match=r"2007_000002\.png is \(7, 8\)"):
        ds[1]
    with pytest.warns(UserWarning, match="resized"):
        item = VOCSegmentation(voc, "train", size_mismatch="resize")[1]
    assert item["label"].shape == (H, W)
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(voc / "SegmentationClass" / "2007_000002.png")
    with pytest.raises(ValueError, match="single-channel"):
        ds[1]


def test_exif_orientation_is_not_applied(tmp_path):
    voc = make_voc(tmp_path)
    save_jpg(voc / "JPEGImages" / "2007_000001.jpg", exif_orientation=6)  # "rotate 90"
    assert VOCSegmentation(voc, "train")[0]["image"].shape == (3, H, W)


# ----------------------------------------------------------------------------- COCO
STUFF_DIR = "annotations/annotations/stuff_annotations/stuff_{}2017_pixelmaps"
THING_DIR = "annotations/panoptic_annotations/semantic_segmentation_{}2017"


def make_coco(root: Path, label_dir: str, maps: dict[str, list[int]], split: str = "val"):
    for stem, values in maps.items():
        save_jpg(root / "coco" / "images" / f"{split}2017" / f"{stem}.jpg")
        save_png(root / label_dir.format(split) / f"{stem}.png", ids_map(values))


def test_coco_stuff_coarse_mapping(tmp_path):
    # 0 unlabelled, 1 person (thing), 92 banner, 106 clouds, 157 sky-other, 127 hill,
    # 171 wall-brick, 182 wood, 183 other
    make_coco(tmp_path, STUFF_DIR, {"000000000001": [0, 1, 92, 106, 157, 127, 171, 182, 183]})
    ds = COCOStuff(tmp_path, "val")
    assert ds.num_classes == 15 and ds.class_names == list(STUFF_SUPERCATEGORIES)
    assert ds.class_names[:3] == ["building", "ceiling", "floor"]
    sky, solid, textile, wall = (
        ds.class_names.index(n) for n in ("sky", "solid", "textile", "wall")
    )
    expected = ids_map([255, 255, textile, sky, sky, solid, wall, solid, 255])
    assert np.array_equal(ds[0]["label"].numpy(), expected)
    fine = COCOStuff(tmp_path, "val", coarse=False)
    assert fine.num_classes == 91 and fine.class_names[0] == "banner"
    assert np.array_equal(fine[0]["label"].numpy(), ids_map([255, 255, 0, 14, 65, 35, 79, 90, 255]))


def test_coco_stuff_errors_and_subsets(tmp_path):
    maps = {f"{i:012d}": [92, 93] for i in range(10)}
    maps["000000000003"] = [92, 184]  # 184 is not a stuff-pixelmap id
    make_coco(tmp_path, STUFF_DIR, maps)
    ds = COCOStuff(tmp_path, "val")
    with pytest.raises(ValueError, match=r"000000000003\.png holds ids \[184\]"):
        ds[3]
    a = COCOStuff(tmp_path, "val", fraction=0.3, subset_seed=1)
    b = COCOStuff(tmp_path, "val", fraction=0.3, subset_seed=1)
    assert len(a) == 3 and a.stems == b.stems
    assert COCOStuff(tmp_path, "val", files=["000000000005.jpg"]).stems == ["000000000005"]
    with pytest.raises(FileNotFoundError, match="stuff_train2017_pixelmaps"):
        COCOStuff(tmp_path, "train", layout="leopart")
    with pytest.raises(FileNotFoundError, match="COCO-Stuff leopart layout"):
        COCOStuff(tmp_path / "missing", "val")
    (tmp_path / STUFF_DIR.format("val") / "000000000007.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000007\.png"):
        COCOStuff(tmp_path, "val")


def test_coco_things_mapping(tmp_path):
    # 0 unlabelled, 1 person, 3 car, 18 dog, 90 toothbrush, 92 banner, 200 rug-merged (stuff)
    make_coco(tmp_path, THING_DIR, {"000000000001": [0, 1, 3, 18, 90, 92, 200]})
    ds = COCOThings(tmp_path, "val")
    assert ds.num_classes == 12 and ds.class_names == list(THING_SUPERCATEGORIES)
    idx = {n: ds.class_names.index(n) for n in ("person", "vehicle", "animal", "indoor")}
    assert (idx["animal"], idx["person"], idx["vehicle"]) == (1, 9, 11)
    expected = ids_map([255, idx["person"], idx["vehicle"], idx["animal"], idx["indoor"], 255, 255])
    assert np.array_equal(ds[0]["label"].numpy(), expected)
    make_coco(tmp_path, THING_DIR, {"000000000002": [1, 12]})  # 12: no COCO 2017 category
    with pytest.raises(ValueError, match=r"holds ids \[12\]"):
        COCOThings(tmp_path, "val")[1]


def test_coco_cocostuff_layout(tmp_path):
    # stuffthingmaps: value = id - 1, 255 unlabelled
    for split in ("val",):
        save_jpg(tmp_path / "images" / f"{split}2017" / "x.jpg")
        save_png(tmp_path / "annotations" / f"{split}2017" / "x.png", ids_map([0, 2, 91, 156, 255]))
    stuff = COCOStuff(tmp_path, "val")
    assert stuff.layout == "cocostuff"
    sky, textile = STUFF_SUPERCATEGORIES.index("sky"), STUFF_SUPERCATEGORIES.index("textile")
    assert np.array_equal(stuff[0]["label"].numpy(), ids_map([255, 255, textile, sky, 255]))
    things = COCOThings(tmp_path, "val", layout="cocostuff")
    person, vehicle = THING_SUPERCATEGORIES.index("person"), THING_SUPERCATEGORIES.index("vehicle")
    assert np.array_equal(things[0]["label"].numpy(), ids_map([person, vehicle, 255, 255, 255]))


# ----------------------------------------------------------------------------- ADE20K
def test_ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for stem in ("ADE_x_1", "ADE_x_2"):
            save_jpg(root / "images" / split / f"{stem}.jpg")
            save_png(root / "annotations" / split / f"{stem}.png", ids_map([0, 1, 150, 13]))
    ds = ADE20K(tmp_path, "validation")  # parent folder accepted
    assert len(ds) == 2 and ds.num_classes == 150 and len(set(ADE20K_CLASSES)) == 150
    assert np.array_equal(ds[0]["label"].numpy(), ids_map([255, 0, 149, 12]))
    assert ds.class_names[0] == "wall" and ds.class_names[12] == "person"
    assert len(ADE20K(root, "train")) == 2
    save_png(root / "annotations" / "training" / "ADE_x_2.png", ids_map([151]))
    with pytest.raises(ValueError, match=r"ADE_x_2\.png holds ids \[151\]"):
        ADE20K(root, "training")[1]
    (root / "annotations" / "training" / "ADE_x_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_x_1\.png"):
        ADE20K(root, "training")
    with pytest.raises(FileNotFoundError, match=r"missing: ROOT/annotations/validation"):
        for f in (root / "annotations" / "validation").iterdir():
            f.unlink()
        (root / "annotations" / "validation").rmdir()
        ADE20K(root, "validation")
    with pytest.raises(ValueError, match="split"):
        ADE20K(root, "test")


# ----------------------------------------------------------------------------- scenes + factory
def test_scene_folder_matches_synthetic_scenes(tmp_path):
    write_scenes(tmp_path / "s", num_images=5, size=64, seed=3, progress=False)
    folder = SceneFolder(tmp_path / "s", "train")
    live = SyntheticScenes(5, size=64, seed=3, split="train")
    assert len(folder) == len(live) == 4 and folder.class_names == live.class_names
    assert folder.num_classes == live.num_classes
    for i in (0, 3):
        assert torch.equal(folder[i]["image"], live[i]["image"])
        assert torch.equal(folder[i]["label"], live[i]["label"])
    assert len(SceneFolder(tmp_path / "s", "val")) == 1
    assert len(SceneFolder(tmp_path / "s", "all")) == 5


def test_scene_folder_class_json_keys_and_errors(tmp_path):
    root = tmp_path / "s"
    write_scenes(root, num_images=3, size=64, seed=0, progress=False)
    (root / "classes.json").write_text(
        json.dumps({"classes": [{"name": f"c{i}"} for i in range(11)]})
    )
    assert SceneFolder(root, "train").class_names[:2] == ["c0", "c1"]
    (root / "classes.json").write_text(json.dumps({"names": ["a", "b"]}))
    ds = SceneFolder(root, "train")
    with pytest.raises(ValueError, match="outside the known range"):
        for i in range(len(ds)):  # scene labels use ids up to 10, only 2 names now
            ds[i]
    (root / "classes.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="class names"):
        SceneFolder(root, "train")
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: ROOT/classes\.json"):
        SceneFolder(root, "train")


def test_factory(tmp_path):
    assert dataset_names() == ("scenes", "voc", "cocostuff", "cocothings", "ade20k")
    train = build_segmentation_dataset("scenes", None, "train", num_images=10, size=64)
    val = build_segmentation_dataset("scenes", None, "val", num_images=10, size=64)
    assert isinstance(train, SyntheticScenes)
    assert set(train.indices).isdisjoint(val.indices) and len(val) == 2
    write_scenes(tmp_path / "s", num_images=4, size=64, seed=0, progress=False)
    assert isinstance(build_segmentation_dataset("scenes", tmp_path / "s", "val"), SceneFolder)
    voc = make_voc(tmp_path)
    assert len(build_segmentation_dataset("voc", voc, "train")) == 2
    with pytest.raises(ValueError, match="root"):
        build_segmentation_dataset("voc", None, "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_segmentation_dataset("cityscapes", tmp_path, "train")


def test_dataset_registry_records():
    from densessl.data.segmentation.registry import get_dataset, list_datasets

    records = list_datasets()
    assert tuple(records) == dataset_names()
    for name, record in records.items():
        assert record.name == name and record.description
    assert get_dataset("COCO-Stuff") is records["cocostuff"]
    assert not records["scenes"].needs_root and records["voc"].needs_root
