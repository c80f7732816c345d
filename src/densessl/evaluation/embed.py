"""A whole labeled dataset through a frozen extractor: patch features and resized labels.

The transductive protocols (overclustering, the diagnostics of the quality benchmark) fit on
the very features they score, so they embed the split once and keep everything in memory:
``N x h x w x D`` float32 features on the CPU and the labels at the protocol's mask size.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.evaluation.preprocess import (
    Extractor,
    ResizedSegmentation,
    eval_mode,
    extract_features,
    make_loader,
)
from densessl.evaluation.preprocess_labels import view_label_fn

__all__ = ["embed_dataset"]


@torch.no_grad()
def embed_dataset(
    extractor: Extractor,
    dataset: Dataset,
    image_size: int,
    mask_size: int,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "embed",
    label_resize: str = "floor",
) -> tuple[Tensor, Tensor]:
    """Patch features and resized labels of a whole labeled dataset.

    ``label_resize``: the :func:`~densessl.evaluation.preprocess_labels.view_label` rule.

    Returns:
        ``(features [N, h, w, D] float32 on CPU, labels [N, mask_size, mask_size] int64)``.
    """
    labels_fn = view_label_fn(image_size, mask_size, label_resize)
    views = ResizedSegmentation(dataset, image_size, mask_size, label_resize=labels_fn)
    loader = make_loader(views, batch_size, num_workers)
    feats, labels = [], []
    with eval_mode(extractor):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            feats.append(extract_features(extractor, batch["image"].to(device)).cpu())
            labels.append(batch["label"])
    if not feats:
        raise ValueError("the dataset is empty")
    return torch.cat(feats), torch.cat(labels)
