"""The quality benchmark's protocol-fitting ceilings (``benchmarks/quality_ceilings.py``):
each trainer learns its task on a tiny config, resumes exactly, and the match row's
correspondences are exact."""

from __future__ import annotations

import statistics

import pytest
import torch

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import BackboneConfig
from densessl.train.supervised import SupervisedConfig
from helpers import BENCHMARKS

TINY = BackboneConfig(arch="vit_tiny", patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture
def ceilings(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality_ceilings

    return quality_ceilings


@pytest.fixture
def image(ceilings):
    return ceilings.TASKS["supervised-image"]


@pytest.fixture
def match(ceilings):
    return ceilings.TASKS["supervised-match"]


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(num_images=16, size=64, seed=0, split="train", class_set="distinct-cues")


def config(steps: int, **overrides) -> SupervisedConfig:
    base = dict(steps=steps, batch_size=16, crop_size=32, lr=3e-3, warmup_steps=5, log_every=1)
    return SupervisedConfig(**{**base, **overrides})


def mean(history, key, part):
    return statistics.fmean(e[key] for e in part(history))


def first(h):
    return h[:10]


def last(h):
    return h[-10:]


def test_image_ceiling_learns_the_dominant_class(ceilings, scenes, tmp_path):
    backbone, history = ceilings.train_ceiling(
        "supervised-image", TINY, scenes, config(60), tmp_path
    )
    assert [e["step"] for e in history] == list(range(1, 61))
    assert mean(history, "loss", last) < mean(history, "loss", first) - 0.3
    assert mean(history, "accuracy", last) > mean(history, "accuracy", first) + 0.2
    assert not backbone.training


def test_image_inputs_are_whole_scenes_labelled_by_their_dominant_class(image, scenes):
    from densessl.data.classification.scene_labels import dominant_class

    images, labels = image.scene_batch(scenes, config(1, batch_size=8), 3)
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8, 64, 64)  # scenes, uncropped
    again, _ = image.scene_batch(scenes, config(1, batch_size=8), 3)
    assert torch.equal(images, again)  # one stream per (seed, step): exact resumption
    classes = image.scene_classes(labels, image.things_of(scenes))
    assert image.things_of(scenes) == list(range(3, 9))
    for label, got in zip(labels, classes.tolist(), strict=True):
        expected = dominant_class(label, list(range(3, 9)))
        assert got == (image.IGNORE if expected is None else expected)
    whole = {tuple(torch.as_tensor(item["label"]).flatten().tolist()) for item in scenes}
    for label in labels:  # each map is a training scene's own, maybe mirrored
        assert {tuple(label.flatten().tolist()), tuple(label.flip(-1).flatten().tolist())} & whole


def test_match_ceiling_learns_correspondences(ceilings, scenes, tmp_path):
    _, history = ceilings.train_ceiling("supervised-match", TINY, scenes, config(40), tmp_path)
    chance = 1 / 16  # 4 x 4 patches of a 32-px view
    assert mean(history, "loss", last) < mean(history, "loss", first) - 0.2
    assert mean(history, "accuracy", last) > max(3 * chance, mean(history, "accuracy", first))


class _Coordinates:
    """Scenes whose red / green channels are 2.5 x the pixel centre's x / y."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        x = (torch.arange(96).float() + 0.5).view(1, -1).expand(96, 96)
        rgb = torch.stack([x * 2.5, x.t() * 2.5, torch.zeros_like(x)])
        return {"image": rgb.round().to(torch.uint8)}


def test_match_points_are_the_same_scene_point_in_both_views(match):
    cfg = config(1, batch_size=8, crop_size=64, crop_scale=(0.4, 1.0))
    views, points, valid, _ = match.match_batch(_Coordinates(), cfg, 5)
    assert views.shape == (2, 8, 3, 64, 64) and points.shape == (2, 8, match.MATCH_POINTS, 2)
    assert bool(valid.all()) and bool((points >= 0).all()) and bool((points < 64).all())
    std, mean_ = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN)
    scene = (views * std + mean_.view(3, 1, 1)) * 255 / 2.5  # scene x / y under each pixel
    gaps = []
    for b in range(8):
        at = [scene[k, b, :2, points[k, b, :, 1].long(), points[k, b, :, 0].long()] for k in (0, 1)]
        gaps.append((at[0] - at[1]).abs().max())
    # both views read the same scene point up to the views' pixel size (< 96 / 64 * 1.2 px)
    assert float(torch.stack(gaps).max()) < 1.8
    point = torch.tensor([[10.0, 20.0]])
    flipped = [match.to_view(point, (0, 0, 48, 48, f), 96) for f in (False, True)]
    assert flipped[0].tolist() == [[20.0, 40.0]] and flipped[1].tolist() == [[76.0, 40.0]]


def test_match_logits_peak_at_the_cell_holding_the_point(match):
    feats = torch.nn.functional.normalize(torch.randn(1, 8, 4, 4), dim=1)
    # align_corners=True (the protocol's source sampling): pixel 0 is cell 0's feature, pixel
    # 32 the last cell's, so these points read cells (0, 0) and (row 2, col 3) exactly
    points = torch.tensor([[[0.0, 0.0], [32.0, 64 / 3]]])
    logits = match.match_logits(feats, feats, points, 32)
    target = match.cell_index(points, 32, (4, 4))
    assert target.tolist() == [[0, 11]] and logits.shape == (1, 2, 16)
    assert logits[0, 0, 0] == pytest.approx(1 / match.MATCH_TEMPERATURE, rel=1e-5)
    assert logits[0, 1, 11] == pytest.approx(1 / match.MATCH_TEMPERATURE, rel=1e-5)
    assert logits.argmax(-1).tolist() == [[0, 11]]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("row", ["supervised-image", "supervised-match"])
def test_a_killed_run_resumes_exactly(ceilings, scenes, tmp_path, row):
    cfg = config(6, batch_size=4, checkpoint_every_s=0.0)
    whole, history = ceilings.train_ceiling(row, TINY, scenes, cfg, tmp_path / "whole")

    def kill(entry):
        if entry["step"] == 4:
            raise _Killed  # after step 4, before its checkpoint: step 3's is on disk

    with pytest.raises(_Killed):
        ceilings.train_ceiling(row, TINY, scenes, cfg, tmp_path / "killed", on_log=kill)
    resumed, again = ceilings.train_ceiling(row, TINY, scenes, cfg, tmp_path / "killed")
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [(e["step"], e["loss"]) for e in again] == [(e["step"], e["loss"]) for e in history]
    with pytest.raises(CheckpointError, match="different"):
        ceilings.train_ceiling(row, TINY, scenes, config(7, batch_size=4), tmp_path / "killed")
