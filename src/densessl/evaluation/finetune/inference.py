"""Scoring a fine-tuned segmenter: whole-image or sliding-window, single- or multi-scale + flip.

Per validation image (batch 1, as both codebases test):

* resize keeping the aspect ratio into ``scale x ratio`` (mmseg ``MultiScaleFlipAug``:
  ``img_scale=(2048, 512)``; ``img_ratios`` for multi-scale), ImageNet normalisation;
* ``whole`` (mmseg ``test_cfg=dict(mode='whole')``, SelfPatch): one forward pass;
  ``slide`` (Segmenter ``segm/model/utils.py`` ``inference``): if the short side is below
  the window it is resized up to it, windows of ``eval_window`` at ``eval_stride`` (the last
  one flush with the border), overlapping logits averaged;
* logits resized bilinearly to the label's original size and soft-maxed; flips are
  un-flipped; the probabilities of every scale / flip are averaged, then argmax;
* a dataset-level confusion matrix (label 255 ignored) gives per-class IoU and mIoU, the mean
  over classes with a non-empty union (mmseg's ``np.nanmean``, which Segmenter's
  ``segm/metrics.py`` and SelfPatch's mmseg both use; a class neither labelled nor predicted
  has IoU 0 in ``per_class_iou`` but does not count) (under
  ``torchrun`` each process scores every ``W``-th image and the matrices are summed).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.evaluation.finetune.pipeline import keep_ratio_size
from densessl.evaluation.finetune.settings import FinetuneSettings
from densessl.evaluation.miou import ConfusionMatrix
from densessl.evaluation.preprocess import normalize, resize_image
from densessl.ops.distributed import all_reduce_sum, is_main_process, rank, world_size

__all__ = ["evaluate_segmenter", "predict_probabilities", "slide_logits"]


def _anchors(length: int, window: int, stride: int) -> list[int]:
    starts = [a for a in range(0, length, stride) if a < length - window]
    return [*starts, length - window]


def slide_logits(model: nn.Module, image: Tensor, window: int, stride: int) -> Tensor:
    """Segmenter's sliding window: ``image [1, 3, H, W]`` -> logits ``[1, C, H', W']``.

    ``H', W'`` are ``H, W`` after the short side was brought up to ``window`` if needed.
    """
    h, w = image.shape[-2:]
    if min(h, w) < window:
        f = window / min(h, w)
        size = (max(window, int(h * f)), max(window, int(w * f)))
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        h, w = size
    total: Tensor | None = None
    count = image.new_zeros(1, 1, h, w)
    for top in _anchors(h, window, stride):
        for left in _anchors(w, window, stride):
            out = model(image[..., top : top + window, left : left + window])
            if total is None:
                total = out.new_zeros(1, out.shape[1], h, w)
            total[..., top : top + window, left : left + window] += out
            count[..., top : top + window, left : left + window] += 1
    assert total is not None
    return total / count


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, image: Tensor, out_size: tuple[int, int], s: FinetuneSettings
) -> Tensor:
    """``image`` uint8/float ``[3, H, W]`` -> class probabilities ``[C, *out_size]``."""
    device = next(model.parameters()).device
    total: Tensor | None = None
    count = 0
    for ratio in s.eval_ratios:
        scaled = (int(s.scale[0] * ratio), int(s.scale[1] * ratio))  # mmseg: int(scale * ratio)
        size = keep_ratio_size(*image.shape[-2:], scaled)
        x = normalize(resize_image(image, size))[None].to(device)
        for flip in (False, True) if s.eval_flip else (False,):
            view = x.flip(-1) if flip else x
            if s.eval_mode == "slide":
                logits = slide_logits(model, view, s.eval_window, s.eval_stride)
            else:
                logits = model(view)
            logits = F.interpolate(
                logits.float(), size=out_size, mode="bilinear", align_corners=False
            )
            probs = logits.softmax(dim=1)[0]
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
            count += 1
    assert total is not None
    return total / count


def evaluate_segmenter(
    model: nn.Module,
    dataset: Dataset,
    settings: FinetuneSettings,
    progress: bool = True,
    autocast: Any = None,
) -> dict[str, Any]:
    """mIoU of ``model`` on ``dataset`` (module docstring).

    Args:
        autocast: a context manager factory for mixed precision (``None``: fp32).

    Returns:
        ``{"miou", "per_class_iou", "num_pixels", "pixel_accuracy"}``.
    """
    num_classes = int(dataset.num_classes)  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    cm = ConfusionMatrix(
        num_classes, ignore_index=int(getattr(dataset, "ignore_index", 255)), device=device
    )
    was_training = model.training
    model.eval()
    n = len(dataset)  # type: ignore[arg-type]
    shard = range(rank(), n, world_size())  # torchrun: each process scores its share
    bar = tqdm(shard, desc="finetune: eval", disable=not progress or not is_main_process())
    for index in bar:
        item = dataset[index]
        label = torch.as_tensor(item["label"]).long().to(device)
        if autocast is None:
            probs = predict_probabilities(model, item["image"], tuple(label.shape), settings)
        else:
            with autocast():
                probs = predict_probabilities(model, item["image"], tuple(label.shape), settings)
        cm.update(probs.argmax(dim=0)[None], label[None])
    model.train(was_training)
    all_reduce_sum(cm.confusion)
    out = cm.compute("none", present_only=True)  # nanmean over classes, as mmseg / Segmenter
    confusion = cm.confusion.float()
    accuracy = float(confusion.diag().sum() / confusion.sum().clamp(min=1))
    return {
        "miou": out["miou"],
        "per_class_iou": out["per_class_iou"],
        "num_pixels": out["num_pixels"],
        "pixel_accuracy": accuracy,
    }
