"""The dataset registry by kind (densessl.data.registry) and protocols of other kinds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import Dataset

from densessl.data import registry as data_registry
from densessl.data.registry import KINDS, DatasetRecord, dataset_names, get_dataset
from densessl.errors import ConfigError
from densessl.evaluation import registry as protocol_registry
from densessl.evaluation.api import evaluate
from densessl.evaluation.registry import ProtocolRecord


class _Labels(Dataset):
    """A classification set: a constant image per item and its class."""

    num_classes = 2
    class_names = ("a", "b")

    def __init__(self, split: str = "val", num_images: int = 4) -> None:
        self.n = num_images

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image = torch.full((3, 32, 32), 40 * (i % 2), dtype=torch.uint8)
        return {"image": image, "label": i % 2, "index": i}


@dataclasses.dataclass
class _Count:
    scale: float = 1.0

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides) -> _Count:
        return cls(**overrides)


def _count(extractor, train, val, settings, device=None, progress=False) -> dict:
    labels = [val[i]["label"] for i in range(len(val))]
    return {"accuracy": settings.scale * sum(labels) / len(labels), "train": len(train)}


def test_kinds_and_segmentation_view():
    assert set(KINDS) == {"segmentation", "classification", "boxes", "video", "keypoint_pairs"}
    assert dataset_names() == dataset_names("segmentation")
    assert dataset_names("segmentation")[0] == "scenes"
    assert get_dataset("VOC").kind == "segmentation"
    with pytest.raises(ValueError, match="unknown video dataset 'voc'"):
        get_dataset("voc", "video")
    with pytest.raises(ValueError, match="kind 'depth'"):
        data_registry.register_dataset(DatasetRecord("x", "x", _Labels, kind="depth"))
    with pytest.raises(ValueError, match="kind 'depth'"):
        ProtocolRecord("p", "p", _Count, _count, str, list, "src", kind="depth")
    with pytest.raises(ValueError, match="no segmentation datasets"):
        ProtocolRecord("p", "p", _Count, _count, str, list, "src", datasets=("imagenet",))


def test_a_protocol_of_another_kind_reads_its_layouts(monkeypatch, capsys):
    record = DatasetRecord("scenes", "labels", _Labels, on_the_fly=_Labels, kind="video")
    monkeypatch.setitem(data_registry._DATASETS, ("video", "scenes"), record)
    proto = ProtocolRecord(
        "counting", "count", _Count, _count, lambda p: "count",
        lambda p, r: [{"result": "acc", "miou": r["accuracy"], "std": None,
                       "matching": "", "metric": "acc"}],
        "nowhere @0, x.py", help="h", kind="video",
    )  # fmt: skip
    assert proto.datasets[0] == "scenes"
    monkeypatch.setitem(protocol_registry._PROTOCOLS, "counting", proto)
    out = evaluate("counting", backbone=lambda x: x, data={"num_images": 6})
    assert "acc %" in capsys.readouterr().out
    assert out["results"] == {"accuracy": 0.5, "train": 6}
    assert out["dataset"]["kind"] == "video" and out["dataset"]["num_classes"] == 2
    with pytest.raises(ConfigError, match="unknown video dataset 'voc'"):
        evaluate("counting", backbone=lambda x: x, dataset="voc", root="x", verbose=False)
    # the segmentation protocols still see only segmentation layouts
    assert "scenes" in protocol_registry.get_protocol("linear").datasets
    assert protocol_registry.get_protocol("linear").kind == "segmentation"
