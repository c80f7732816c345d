"""The ``supervised-image`` ceiling of the quality benchmark's k-NN column.

Trained on each crop's dominant object class (the label k-NN measures), by the loop of
``quality_ceilings.py``: a linear head on the final CLS token (what k-NN reads), cross-entropy
on the class of :func:`densessl.data.classification.scene_labels.dominant_class` applied to
the crop's label map (nearest-resized like the crop). The crop's map, not the whole scene's:
a crop can cut the scene's dominant object out, and a label the network cannot see is noise;
at evaluation the network sees the whole scene and its label is the whole scene's, so both
times the label is that of the pixels the network sees. Crops without any object pixel are
left out of the loss, as the k-NN split leaves such scenes out. The crops are the supervised
row's very crops of ``(seed, step)`` (:func:`densessl.train.supervised.sample_batch`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.classification.scene_labels import dominant_class
from densessl.models.vit import ViTBackbone
from densessl.train.precision import autocast
from densessl.train.supervised import SupervisedConfig, sample_batch

IGNORE = -100  # cross-entropy target of crops without any object (left out of the loss)
CROPS_PER_ITEM = 1


def constants() -> dict[str, Any]:
    """The row's fixed constants (in its spec and its checkpoint's identity)."""
    return {"ratio": (3 / 4, 4 / 3), "ignore": "crops without objects"}


def things_of(dataset: Any) -> list[int]:
    """The thing class ids of a scenes dataset (after its stuff classes)."""
    return list(range(dataset.config.num_stuff_classes, dataset.num_classes))


def image_batch(
    dataset: Any, config: SupervisedConfig, step: int, things: list[int]
) -> tuple[Tensor, Tensor]:
    """``images [B, 3, S, S]`` (normalised) and each crop's dominant class ``[B]`` (an index
    into ``things``, ``IGNORE`` without any object): the very crops of the supervised row's
    ``(seed, step)`` (:func:`densessl.train.supervised.sample_batch`), another label."""
    images, labels = sample_batch(dataset, config, step)
    classes = [dominant_class(label, things) for label in labels]
    return images, torch.tensor([IGNORE if c is None else c for c in classes])


class ImageClassifier(nn.Module):
    """The backbone with a linear head on its final CLS token ``[B, D] -> [B, classes]``."""

    def __init__(self, backbone: ViTBackbone, num_classes: int) -> None:
        super().__init__()
        if not backbone.has_cls_token:
            raise ValueError("supervised-image needs a backbone with a CLS token")
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.resolved_embed_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone.tokens(images)[0])


def step_loss(
    model: nn.Module, dataset: Any, config: SupervisedConfig, step: int,
    device: torch.device, dtype: torch.dtype | None,
) -> tuple[Tensor, int, int]:  # fmt: skip
    """``(loss, correct crops, crops with an object)`` of ``step``."""
    images, labels = image_batch(dataset, config, step, things_of(dataset))
    images, labels = images.to(device), labels.to(device)
    with autocast(device, dtype):
        logits = model(images)
    valid = labels != IGNORE
    if not bool(valid.any()):  # a batch of object-free crops: a zero loss keeps the graph
        return logits.float().sum() * 0.0, 0, 0
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    correct = int(((logits.argmax(1) == labels) & valid).sum())
    return loss, correct, int(valid.sum())


def build(backbone: ViTBackbone, dataset: Any) -> nn.Module:
    """The trained module: the backbone and a CLS head over the dataset's thing classes."""
    return ImageClassifier(backbone, len(things_of(dataset)))
