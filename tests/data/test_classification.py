"""Classification layouts: the ImageNet class-per-folder tree and the labelled scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.classification.image_folder import ImageFolder
from densessl.data.classification.scene_labels import SyntheticSceneClasses, dominant_class
from densessl.data.scenes.dataset import SyntheticScenes
from densessl.evaluation.api import evaluate


def _tree(root, split, classes, per_class=2):
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((20, 24, 3), 30 * i, np.uint8)
            Image.fromarray(pixels).save(root / split / c / f"{i}.JPEG")
    (root / split / classes[0] / "notes.txt").write_text("not an image")


def test_image_folder_reads_the_imagenet_layout(tmp_path):
    _tree(tmp_path, "train", ["n02", "n01", "n03"])
    _tree(tmp_path, "val", ["n03", "n01"], per_class=1)
    train, val = ImageFolder(tmp_path, "train"), ImageFolder(tmp_path, "val")
    assert train.class_names == ["n01", "n02", "n03"] and len(train) == 6
    assert [label for _, label in val.samples] == [0, 2]  # indices of train's classes
    item = val[1]
    assert item["image"].shape == (3, 20, 24) and item["label"] == 2


def test_image_folder_names_the_layout_when_files_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ROOT/\{train,val\}/<class>/\*\.jpg.*ROOT/val"):
        ImageFolder(tmp_path, "val")
    _tree(tmp_path, "train", ["a"])
    _tree(tmp_path, "val", ["b"])
    with pytest.raises(FileNotFoundError, match="ROOT/val/b has no counterpart"):
        ImageFolder(tmp_path, "val")


def test_scene_labels_are_the_dominant_object_class():
    scenes = SyntheticScenes(20, 64, split="val")
    labelled = SyntheticSceneClasses("val", 20, 64)
    s = scenes.config.num_stuff_classes
    for j, (i, label) in enumerate(labelled.items):
        counts = torch.bincount(scenes[i]["label"].flatten().long(), minlength=256)
        assert int(counts[s : scenes.num_classes].argmax()) == label == labelled[j]["label"]
    assert dominant_class(torch.zeros(4, 4, dtype=torch.uint8), [3, 4]) is None


def test_knn_on_an_imagenet_tree(tmp_path):
    _tree(tmp_path, "train", ["a", "b"], per_class=3)
    _tree(tmp_path, "val", ["a", "b"], per_class=2)
    out = evaluate("knn", "random:vit_tiny", dataset="imagenet", root=tmp_path, verbose=False,
                   progress=False, resize=32, crop=32)  # fmt: skip
    assert out["dataset"]["num_val"] == 4 and out["results"]["num_train"] == 6
    assert out["settings"]["temperature"] == 0.07 and out["settings"]["num_neighbors"] == 20


def test_a_written_scenes_folder_gives_the_same_labels_and_boxes(tmp_path):
    from densessl.data.boxes.scene_boxes import SceneFolderBoxes, SyntheticSceneBoxes
    from densessl.data.classification.scene_labels import SceneFolderClasses
    from densessl.data.scenes.dataset import write_scenes

    write_scenes(tmp_path / "s", 10, 64, 0, val_fraction=0.5, progress=False)
    folder = SceneFolderClasses(tmp_path / "s", "val")
    rendered = SyntheticSceneClasses("val", 10, 64, val_fraction=0.5)
    assert [label for _, label in folder.items] == [label for _, label in rendered.items]
    assert folder.class_names == rendered.class_names
    boxes = SceneFolderBoxes(tmp_path / "s", "val")
    same = SyntheticSceneBoxes("val", 10, 64, val_fraction=0.5)
    assert [b.tolist() for _, b in boxes.items] == [b.tolist() for _, b in same.items]
