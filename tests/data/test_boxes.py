"""Box layouts: VOC07/12 XML, LOST's COCO-20k, the scenes' exact boxes; discovery on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.boxes.coco20k import COCO20kBoxes
from densessl.data.boxes.scene_boxes import SyntheticSceneBoxes, object_boxes
from densessl.data.boxes.voc import VOC07Boxes, VOC12Boxes
from densessl.errors import DataError
from densessl.evaluation.api import evaluate
from densessl.evaluation.features import random_init
from densessl.models.vit import BackboneConfig

XML = """<annotation><filename>{name}.jpg</filename>{objects}</annotation>"""
OBJ = (
    "<object><name>{cls}</name><truncated>{t}</truncated><difficult>{d}</difficult>"
    "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
    "</bndbox></object>"
)


def _voc(root, year, images):
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for name, objects in images.items():
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        body = "".join(OBJ.format(cls=c, t=t, d=d, b=b) for c, b, t, d in objects)
        (base / "Annotations" / f"{name}.xml").write_text(XML.format(name=name, objects=body))
    (base / "ImageSets/Main/trainval.txt").write_text("\n".join(images) + "\n")
    return base


def test_voc_boxes_follow_lost_extract_gt_voc(tmp_path):
    _voc(tmp_path, "2007", {
        "000005": [("dog", (1, 1, 48, 40), 0, 0), ("cat", (10, 5, 20, 30), 1, 0)],
        "000007": [("car", (5, 6, 7, 8), 0, 1)],
    })  # fmt: skip
    data = VOC07Boxes(tmp_path)
    assert len(data) == 2 and data[0]["name"] == "000005"
    assert data[0]["boxes"].tolist() == [[0, 0, 48, 40], [9, 4, 20, 30]]
    assert data[0]["image"].shape == (3, 40, 48)
    hard = VOC07Boxes(tmp_path, remove_hards=True)  # --no_hard: the second image goes
    assert len(hard) == 1 and hard[0]["boxes"].tolist() == [[0, 0, 48, 40]]
    with pytest.raises(FileNotFoundError, match=r"VOC2012 detection layout.*VOCdevkit/VOC2012"):
        VOC12Boxes(tmp_path)


def test_voc_missing_and_bad_files_are_named(tmp_path):
    base = _voc(tmp_path, "2012", {"a": [("dog", (1, 1, 4, 4), 0, 0)]})
    (base / "ImageSets/Main/trainval.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match=r"ROOT/VOCdevkit/VOC2012/Annotations/b\.xml"):
        VOC12Boxes(tmp_path)
    (base / "ImageSets/Main/trainval.txt").write_text("a\n")
    (base / "Annotations/a.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"a\.xml: not a VOC annotation"):
        VOC12Boxes(tmp_path)


def _coco(root):
    (root / "images/train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    names = [
        "train2014/COCO_train2014_000000000009.jpg",
        "train2014/COCO_train2014_000000000003.jpg",
    ]
    for n in names:
        Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(root / "images" / n)
    (root / "coco_20k_filenames.txt").write_text("\n".join(names) + "\n")
    anns = [
        {"image_id": 9, "bbox": [1.4, 2.5, 10.2, 3.0], "iscrowd": 0, "category_id": 1},
        {"image_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 1, "category_id": 1},
        {"image_id": 3, "bbox": [4, 4, 20, 20], "iscrowd": 0, "category_id": 2},
        {"image_id": 77, "bbox": [4, 4, 20, 20], "iscrowd": 0, "category_id": 2},
    ]
    data = {"images": [{"id": 3}, {"id": 9}, {"id": 77}], "annotations": anns, "categories": []}
    (root / "annotations/instances_train2014.json").write_text(json.dumps(data))


def test_coco20k_reads_lost_file_list_and_boxes(tmp_path):
    _coco(tmp_path)
    data = COCO20kBoxes(tmp_path)
    assert [s[0] for s in data.samples] == ["3", "9"]  # increasing image id
    assert data[0]["boxes"].tolist() == [[4, 4, 24, 24]]
    assert data[1]["boxes"].tolist() == [[1, 2, 12, 6]]  # round(): 2.5 -> 2, 11.6 -> 12
    (tmp_path / "coco_20k_filenames.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"COCO-20k layout.*ROOT/coco_20k_filenames\.txt"):
        COCO20kBoxes(tmp_path)


def test_scene_boxes_are_the_objects_pixel_extent():
    label = torch.zeros(10, 12, dtype=torch.uint8)
    label[2:5, 3:9] = 4
    label[7:9, 0:2] = 4
    label[6, 6] = 5
    boxes = object_boxes(label, [4, 5], min_area=1)
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 7, 2, 9], [6, 6, 7, 7]]
    assert object_boxes(label, [4, 5], min_area=5).tolist() == [[3, 2, 9, 5]]
    data = SyntheticSceneBoxes("val", 10, 64)
    assert len(data) + data.dropped == 5 and data[0]["boxes"].shape[1] == 4


def test_discovery_on_voc_and_coco_layouts(tmp_path):
    small = random_init(BackboneConfig(arch="vit_tiny", embed_dim=32, depth=1, num_heads=2))
    _voc(tmp_path / "voc", "2007", {"x": [("dog", (1, 1, 48, 40), 0, 0)]})
    out = evaluate("discovery", small, dataset="voc07", root=tmp_path / "voc",
                   verbose=False, progress=False)  # fmt: skip
    assert out["dataset"]["val_split"] == "trainval" and out["results"]["num_images"] == 1
    first = out["results"]["per_image"][0]
    assert first["box"][2] <= 48 and first["box"][3] <= 40  # clipped to the unpadded image
    assert out["results"]["corloc"] == (100.0 if first["hit"] else 0.0)
    _coco(tmp_path / "coco")
    out = evaluate("discovery", small, dataset="coco20k", root=tmp_path / "coco",
                   verbose=False, progress=False)  # fmt: skip
    assert out["dataset"]["val_split"] == "train" and out["results"]["num_images"] == 2
