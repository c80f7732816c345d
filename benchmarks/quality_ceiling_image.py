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

The loss adds the supervised row's pixel cross-entropy on the same crops' masks (its 1x1
patch head, ``WITH_MASKS``), so this row is the ``supervised`` row plus a CLS head on the
dominant class, the one difference being the CLS loss, and it uses no information beyond
the masks (the dominant class is a function of them). Why: trained on the CLS loss alone
(the same budget, lr 1e-3; also 3e-4) the training loss stayed at the entropy of the class
prior (1.75 nats, 6 classes) for the first 1,200 steps measured: with near-linear features
at init, the CLS's average over patches holds almost nothing of the textures that name a
class, so one label per crop gives the network little to start from. With the masks added
the CLS head still predicted the majority class for the first 500 steps measured; whether it
leaves the prior within the budget is what the cell's training ``accuracy`` shows.
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
PIXEL_IGNORE = 255  # the masks' ignore label (outline pixels)
#: Add the supervised row's pixel loss on the masks (see the module docstring).
WITH_MASKS = True


def constants() -> dict[str, Any]:
    """The row's fixed constants (in its spec and its checkpoint's identity)."""
    return {"ratio": (3 / 4, 4 / 3), "ignore": "crops without objects", "masks": WITH_MASKS}


def things_of(dataset: Any) -> list[int]:
    """The thing class ids of a scenes dataset (after its stuff classes)."""
    return list(range(dataset.config.num_stuff_classes, dataset.num_classes))


def crop_classes(maps: Tensor, things: list[int]) -> Tensor:
    """Each crop's dominant class ``[B]`` from its label map ``[B, S, S]``: an index into
    ``things`` (:func:`~densessl.data.classification.scene_labels.dominant_class`), or
    ``IGNORE`` for a crop without any object pixel."""
    classes = [dominant_class(label, things) for label in maps]
    return torch.tensor([IGNORE if c is None else c for c in classes])


class ImageClassifier(nn.Module):
    """The backbone with a linear head on its final CLS token (``[B, things]`` logits) and,
    with ``num_pixel_classes``, the supervised row's 1x1 head on its patches (``[B, classes,
    S, S]`` logits, upsampled bilinearly to the crop)."""

    def __init__(self, backbone: ViTBackbone, num_classes: int, num_pixel_classes: int) -> None:
        super().__init__()
        if not backbone.has_cls_token:
            raise ValueError("supervised-image needs a backbone with a CLS token")
        self.backbone = backbone
        dim = backbone.config.resolved_embed_dim
        self.head = nn.Linear(dim, num_classes)
        self.pixel_head = nn.Conv2d(dim, num_pixel_classes, 1) if num_pixel_classes else None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        cls, patches = self.backbone.tokens(images)
        if self.pixel_head is None:
            return self.head(cls), None
        dense = self.pixel_head(patches.permute(0, 3, 1, 2))
        dense = F.interpolate(dense, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(cls), dense


def step_loss(
    model: nn.Module, dataset: Any, config: SupervisedConfig, step: int,
    device: torch.device, dtype: torch.dtype | None,
) -> tuple[Tensor, int, int]:  # fmt: skip
    """``(loss, crops whose class the CLS head gets right, crops with an object)``."""
    images, maps = sample_batch(dataset, config, step)
    labels = crop_classes(maps, things_of(dataset))
    images, labels, maps = images.to(device), labels.to(device), maps.to(device)
    with autocast(device, dtype):
        logits, dense = model(images)
    valid = labels != IGNORE
    loss = logits.float().sum() * 0.0  # a batch of object-free crops keeps the graph
    if bool(valid.any()):
        loss = loss + F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    if dense is not None:
        loss = loss + F.cross_entropy(dense.float(), maps, ignore_index=PIXEL_IGNORE)
    correct = int(((logits.argmax(1) == labels) & valid).sum())
    return loss, correct, int(valid.sum())


def build(backbone: ViTBackbone, dataset: Any) -> nn.Module:
    """The trained module: the backbone and a CLS head over the dataset's thing classes."""
    pixel = dataset.num_classes if WITH_MASKS else 0
    return ImageClassifier(backbone, len(things_of(dataset)), pixel)
