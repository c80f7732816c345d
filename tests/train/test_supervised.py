"""Supervised reference training: seeded crops, learning, exact resume, refused mismatches."""

from __future__ import annotations

import pytest
import torch

from densessl.data.scenes.dataset import SyntheticScenes
from densessl.io.checkpoint import CheckpointError
from densessl.models.vit import BackboneConfig
from densessl.train.supervised import SupervisedConfig, sample_batch, train_supervised

BACKBONE = BackboneConfig(
    arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=1, num_heads=2
)


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(num_images=24, size=64, seed=3, split="train")


def config(**overrides) -> SupervisedConfig:
    values = dict(steps=4, batch_size=4, crop_size=32, lr=1e-3, warmup_steps=1, log_every=1)
    return SupervisedConfig(**{**values, **overrides})


def test_batches_are_seeded_by_step(scenes):
    images, labels = sample_batch(scenes, config(), step=3)
    again_images, again_labels = sample_batch(scenes, config(), step=3)
    other_images, _ = sample_batch(scenes, config(), step=4)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other_images)
    valid = labels[labels != 255]
    assert valid.min() >= 0 and valid.max() < scenes.num_classes


class Halves:
    """Red left part (class 0) and blue right part (class 1), split at a random column."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.splits = torch.randint(16, 48, (n,), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.splits)

    def __getitem__(self, i: int) -> dict:
        label = torch.zeros(64, 64, dtype=torch.uint8)
        label[:, self.splits[i] :] = 1
        image = torch.stack([(1 - label) * 255, torch.zeros_like(label), label * 255])
        return {"image": image, "label": label, "index": i}


def test_a_learnable_task_is_learned(tmp_path):
    dataset = Halves(16)
    _, history = train_supervised(
        BACKBONE, dataset, 2, config(steps=60, lr=3e-3, batch_size=8, log_every=20), tmp_path
    )
    assert [h["step"] for h in history] == [20, 40, 60]
    assert history[-1]["loss"] < 0.3, history  # chance: ln 2 = 0.69
    assert history[-1]["pixel_accuracy"] > 0.9, history
    assert (tmp_path / "supervised.pt").is_file()
    assert (tmp_path / "supervised.pt").is_file()


def test_resume_after_interruption_is_exact(scenes, tmp_path):
    whole, _ = train_supervised(BACKBONE, scenes, scenes.num_classes, config(), tmp_path / "a")

    def stop_at_three(entry):
        if entry["step"] == 3:
            raise KeyboardInterrupt  # killed after step 2's checkpoint, before step 3's

    with pytest.raises(KeyboardInterrupt):
        train_supervised(
            BACKBONE,
            scenes,
            scenes.num_classes,
            config(checkpoint_every_s=0.0),
            tmp_path / "b",
            on_log=stop_at_three,
        )
    resumed, history = train_supervised(
        BACKBONE, scenes, scenes.num_classes, config(), tmp_path / "b"
    )
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for (name, p), q in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_different_configuration_is_refused(scenes, tmp_path):
    train_supervised(BACKBONE, scenes, scenes.num_classes, config(steps=1), tmp_path)
    with pytest.raises(CheckpointError, match="different supervised configuration"):
        train_supervised(BACKBONE, scenes, scenes.num_classes, config(steps=2), tmp_path)


@pytest.mark.parametrize(("key", "value"), [("steps", 0), ("crop_scale", (0.5, 0.2)), ("lr", 0.0)])
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"supervised.{key}"):
        config(**{key: value})
