"""CLS attention of an evaluation extractor, embedded together with its patch features.

The fully-unsupervised protocol (:mod:`densessl.evaluation.unsupervised.pipeline`) needs,
besides the patch features, a *noisy foreground* per image: Leopart's mask from the last block's
CLS→patch attention (:func:`densessl.ops.attention_foreground.attention_foreground`: heads
averaged, blurred, ``mass`` kept, tiny components removed), with 65 % of the mass in the
evaluation (``experiments/utils.py`` ``store_and_compute_features``) instead of the 60 % of
training. :func:`attention_model` finds the attention of an extractor;
:func:`embed_with_attention` embeds a labeled dataset and returns the head-averaged maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.errors import ConfigError
from densessl.evaluation.preprocess import (
    Extractor,
    ResizedSegmentation,
    eval_mode,
    extract_features,
    make_loader,
)

__all__ = ["attention_model", "embed_with_attention"]


def attention_model(extractor: Any) -> tuple[Any, Callable[[Tensor], Tensor]] | None:
    """The module whose ``last_attention(images) -> [B, heads, h*w]`` serves ``extractor``.

    Looks at the extractor itself and at its ``model`` attribute (a
    :class:`~densessl.evaluation.features.PatchFeatureExtractor` wraps a
    :class:`~densessl.models.vit.ViTBackbone` there). Backbones without a CLS token have no
    such map.

    Returns:
        ``(module, last_attention)`` or ``None`` when there is no CLS attention.
    """
    for candidate in (extractor, getattr(extractor, "model", None)):
        fn = getattr(candidate, "last_attention", None)
        if callable(fn) and getattr(candidate, "has_cls_token", True):
            return candidate, fn
    return None


@torch.no_grad()
def embed_with_attention(
    extractor: Extractor,
    dataset: Dataset,
    image_size: int,
    mask_size: int,
    attention: Any = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "embed",
) -> tuple[Tensor, Tensor, Tensor]:
    """Patch features, head-averaged CLS attention and resized labels of a labeled dataset.

    Args:
        extractor: ``images -> patches [B, h, w, D]``.
        dataset: Items ``{"image", "label"}`` (resized as :class:`ResizedSegmentation`).
        image_size / mask_size: Sides of the resized images and label maps.
        attention: A module with ``last_attention`` (another backbone's attention, moved to
            the right device already); ``None``: the extractor's own (features and
            attention from one forward pass when it has ``tokens_and_attention``).
        batch_size / num_workers / device / progress / desc: Loader and progress bar.

    Returns:
        ``(features [N, h, w, D], attention [N, ha, wa], labels [N, m, m])`` on CPU.

    Raises:
        ConfigError: ``attention`` is ``None`` and the extractor has no CLS attention.
    """
    own = None
    if attention is None:
        found = attention_model(extractor)
        if found is None:
            raise ConfigError(
                "CBFE needs a CLS attention map, and this backbone has none (no CLS token, or "
                "not a densessl ViT); set attention_backbone=... (Leopart: DINO ViT-S/16)"
            )
        own = found[0]
    source = own if own is not None else attention
    items = ResizedSegmentation(dataset, image_size, mask_size)
    feats, attns, labels = [], [], []
    with eval_mode(extractor):
        for batch in tqdm(
            make_loader(items, batch_size, num_workers), desc=desc, disable=not progress
        ):
            images = batch["image"].to(device)
            if own is not None and hasattr(own, "tokens_and_attention"):
                _, patches, attn = own.tokens_and_attention(images)
            else:
                patches = extract_features(extractor, images)
                attn = source.last_attention(images)
            rows = round(math.sqrt(attn.shape[-1] * images.shape[-2] / images.shape[-1]))
            feats.append(patches.float().cpu())
            attns.append(attn.float().mean(dim=1).reshape(len(images), rows, -1).cpu())
            labels.append(batch["label"])
    if not feats:
        raise ValueError("the dataset is empty")
    return torch.cat(feats), torch.cat(attns), torch.cat(labels)
