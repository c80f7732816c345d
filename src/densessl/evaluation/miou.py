"""Dataset-level mIoU with optional cluster-to-class matching.

Every dense evaluator in :mod:`densessl.evaluation` scores through this module, so that the
numbers of the linear probe, overclustering and dense retrieval are computed the same way.

Conventions (Leopart ``experiments/utils.py`` ``PredsmIoU``, MkuuWaUjinga/leopart @7835701):

* Pixels are **pooled over the whole dataset**: one confusion matrix accumulates true/false
  positives and negatives per GT class over every batch; mIoU is the mean of the per-class
  IoU computed from those totals (not a mean of per-image scores).
* Pixels whose target equals ``ignore_index`` (255 for VOC boundaries) are dropped.
* ``IoU_c = TP_c / max(TP_c + FP_c + FN_c, 1e-8)``. A class that appears neither in the GT
  nor in the (matched) predictions therefore scores **0** and still counts in the mean, as in
  Leopart. ``present_only=True`` gives the mmseg-style variant that averages only over the
  classes with a non-empty union (present in the GT or in the predictions).
* The confusion matrix is ``[K_pred, C]``: rows are predicted ids (cluster ids or class
  ids), columns GT classes.

Matching of predicted ids to classes:

* ``"none"``: predicted id ``c`` is class ``c`` (linear probe). Ids ``>= C`` hit no class.
* ``"hungarian"``: one-to-one assignment maximising the summed IoU, solved with
  ``scipy.optimize.linear_sum_assignment(1 - IoU)`` on the ``[C, K]`` IoU matrix exactly as
  Leopart does. When ``K > C`` only ``C`` clusters can be matched; as in Leopart's
  ``PredsmIoU`` (and open-hummingbird-eval's copy) the unmatched clusters are merged into
  the **background class 0**. When ``K < C`` some classes stay unmatched (IoU 0).
* ``"many_to_one"``: every cluster goes to the class that holds most of its pixels, i.e.
  the class with the highest precision ``TP / (TP + FP)`` (Leopart's overclustering with
  ``precision_based=True``); ties go to the lowest class id. ``criterion="iou"`` reproduces
  Leopart's ``precision_based=False`` variant.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

Matching = Literal["none", "hungarian", "many_to_one"]

_EPS = 1e-8

__all__ = [
    "ConfusionMatrix",
    "fold_confusion",
    "hungarian_match",
    "iou_per_class",
    "many_to_one_match",
    "match",
    "matched_miou",
    "mean_iou",
]


class ConfusionMatrix:
    """Streaming ``[K_pred, C]`` confusion matrix over a whole dataset.

    Args:
        num_classes: Number of GT classes ``C`` (the ignore index excluded).
        num_predictions: Number of predicted ids ``K`` (clusters); defaults to ``C``.
        ignore_index: Target value whose pixels are dropped (``None`` keeps all pixels).
        device: Where the counts live; by default the device of the first ``update``.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 255]))
        >>> cm.miou()
        1.0
    """

    def __init__(
        self,
        num_classes: int,
        num_predictions: int | None = None,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.num_predictions = int(num_predictions if num_predictions is not None else num_classes)
        if self.num_predictions < 1:
            raise ValueError(f"num_predictions must be >= 1, got {num_predictions}")
        self.ignore_index = ignore_index
        self._device = torch.device(device) if device is not None else None
        self.matrix: Tensor | None = None

    def _zeros(self, device: torch.device) -> Tensor:
        return torch.zeros(self.num_predictions, self.num_classes, dtype=torch.int64, device=device)

    @property
    def confusion(self) -> Tensor:
        """The ``[K_pred, C]`` int64 counts (zeros before the first update)."""
        if self.matrix is None:
            self.matrix = self._zeros(self._device or torch.device("cpu"))
        return self.matrix

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self.matrix = None

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of pixels.

        Args:
            pred: Integer predicted ids in ``[0, K)``, any shape.
            target: Integer GT classes in ``[0, C)`` or ``ignore_index``, same number of
                elements as ``pred``.

        Raises:
            ValueError: On shape mismatch or ids out of range.
        """
        if pred.numel() != target.numel():
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if self.matrix is None:
            self.matrix = self._zeros(self._device or pred.device)
        device = self.matrix.device
        pred = pred.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        if bool(((target < 0) | (target >= self.num_classes)).any()):
            raise ValueError(f"target has values outside [0, {self.num_classes}) and ignore")
        if bool(((pred < 0) | (pred >= self.num_predictions)).any()):
            raise ValueError(f"pred has values outside [0, {self.num_predictions})")
        flat = pred * self.num_classes + target
        counts = torch.bincount(flat, minlength=self.num_predictions * self.num_classes)
        self.matrix += counts.view(self.num_predictions, self.num_classes)

    def per_class_iou(self, matching: Matching = "none", criterion: str = "precision") -> Tensor:
        """IoU per GT class (float64 ``[C]``) after the given matching."""
        return iou_per_class(self.matched(matching, criterion)[0])

    def miou(
        self, matching: Matching = "none", present_only: bool = False, criterion: str = "precision"
    ) -> float:
        """Mean IoU after the given matching (see module docstring for the conventions)."""
        return mean_iou(self.matched(matching, criterion)[0], present_only=present_only)

    def matched(
        self, matching: Matching = "none", criterion: str = "precision"
    ) -> tuple[Tensor, Tensor]:
        """Fold the matrix with a matching.

        Returns:
            ``(confusion [C, C], mapping [K])`` where ``mapping[k]`` is the class of id ``k``
            (for ``"none"``: the identity, ids ``>= C`` mapped to ``-1``).
        """
        conf = self.confusion
        mapping = match(conf, matching, criterion=criterion)
        return fold_confusion(conf, mapping), mapping

    def compute(
        self, matching: Matching = "none", present_only: bool = False, criterion: str = "precision"
    ) -> dict:
        """All results as plain Python values.

        Returns:
            ``{"miou", "per_class_iou" (list), "mapping" (list, predicted id -> class),
            "matching", "num_pixels"}``.
        """
        folded, mapping = self.matched(matching, criterion)
        return {
            "miou": mean_iou(folded, present_only=present_only),
            "per_class_iou": iou_per_class(folded).tolist(),
            "mapping": mapping.tolist(),
            "matching": matching,
            "num_pixels": int(self.confusion.sum()),
        }


def iou_per_class(confusion: Tensor) -> Tensor:
    """Per-class IoU of a ``[K, C]`` confusion matrix where predicted id ``c`` means class ``c``.

    Predicted ids ``>= C`` (when ``K > C``) belong to no class: their pixels are only misses.

    Returns:
        float64 ``[C]``: ``TP / max(TP + FP + FN, 1e-8)``.
    """
    conf = confusion.to(torch.float64)
    k, c = conf.shape
    n = min(k, c)
    tp = torch.zeros(c, dtype=torch.float64, device=conf.device)
    predicted = torch.zeros_like(tp)
    tp[:n] = torch.diagonal(conf[:n, :n])
    predicted[:n] = conf[:n].sum(dim=1)
    union = predicted + conf.sum(dim=0) - tp
    return tp / union.clamp_min(_EPS)


def mean_iou(confusion: Tensor, present_only: bool = False) -> float:
    """Mean of :func:`iou_per_class`.

    Args:
        confusion: ``[K, C]`` counts, predicted id ``c`` meaning class ``c``.
        present_only: Average only over classes with a non-empty union (GT or predicted
            pixels); ``nan`` if there is none. Default: over all ``C`` classes (Leopart).
    """
    iou = iou_per_class(confusion)
    if not present_only:
        return float(iou.mean())
    conf = confusion.to(torch.float64)
    n = min(conf.shape)
    union = conf.sum(dim=0)
    union[:n] += conf[:n].sum(dim=1)
    present = union > 0
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


def _iou_matrix(confusion: Tensor) -> Tensor:
    """IoU of every (predicted id, class) pair: float64 ``[K, C]``."""
    conf = confusion.to(torch.float64)
    union = conf.sum(dim=1, keepdim=True) + conf.sum(dim=0, keepdim=True) - conf
    return conf / union.clamp_min(_EPS)


def hungarian_match(confusion: Tensor, background: int = 0) -> Tensor:
    """One-to-one matching of predicted ids to classes maximising the total IoU.

    Solves ``linear_sum_assignment(1 - IoU)`` on the ``[C, K]`` IoU matrix (GT classes as rows,
    as in Leopart, so ties are broken identically).

    Args:
        confusion: ``[K, C]`` counts.
        background: Class given to ids left unmatched when ``K > C`` (Leopart: 0).

    Returns:
        int64 ``[K]`` mapping, on the device of ``confusion``.
    """
    iou = _iou_matrix(confusion).T.cpu().numpy()
    rows, cols = linear_sum_assignment(1.0 - iou)
    mapping = np.full(confusion.shape[0], background, dtype=np.int64)
    mapping[cols] = rows
    return torch.from_numpy(mapping).to(confusion.device)


def many_to_one_match(confusion: Tensor, criterion: str = "precision") -> Tensor:
    """Greedy many-to-one matching: each predicted id goes to its best-scoring class.

    Args:
        confusion: ``[K, C]`` counts.
        criterion: ``"precision"`` (``TP / (TP + FP)``, the class holding most of the
            cluster's pixels; Leopart's overclustering) or ``"iou"``. Ties and empty
            clusters go to the lowest class id (0).

    Returns:
        int64 ``[K]`` mapping.
    """
    conf = confusion.to(torch.float64)
    if criterion == "precision":
        score = conf / conf.sum(dim=1, keepdim=True).clamp_min(_EPS)
    elif criterion == "iou":
        score = _iou_matrix(confusion)
    else:
        raise ValueError(f"criterion must be 'precision' or 'iou', got {criterion!r}")
    return score.argmax(dim=1)


def match(confusion: Tensor, matching: Matching, criterion: str = "precision") -> Tensor:
    """Mapping ``[K]`` from predicted ids to classes for a matching name (see module doc)."""
    k, c = confusion.shape
    if matching == "none":
        mapping = torch.arange(k, device=confusion.device)
        return torch.where(mapping < c, mapping, torch.full_like(mapping, -1))
    if matching == "hungarian":
        return hungarian_match(confusion)
    if matching == "many_to_one":
        return many_to_one_match(confusion, criterion=criterion)
    raise ValueError(f"matching must be 'none', 'hungarian' or 'many_to_one', got {matching!r}")


def fold_confusion(confusion: Tensor, mapping: Tensor) -> Tensor:
    """Merge the rows of a ``[K, C]`` confusion matrix by ``mapping`` into ``[C, C]``.

    Rows mapped to ``-1`` are predictions of no class: they only contribute misses.
    """
    c = confusion.shape[1]
    mapping = mapping.to(confusion.device, torch.int64)
    out = torch.zeros(c + 1, c, dtype=confusion.dtype, device=confusion.device)
    out.index_add_(0, torch.where(mapping < 0, torch.full_like(mapping, c), mapping), confusion)
    return out[:c]


def matched_miou(
    pred_ids: Tensor,
    target: Tensor,
    num_classes: int,
    num_clusters: int | None = None,
    matching: Matching = "hungarian",
    ignore_index: int | None = 255,
    present_only: bool = False,
    criterion: str = "precision",
) -> dict:
    """One-shot mIoU of predicted ids against targets, with matching.

    Args:
        pred_ids: Predicted ids in ``[0, num_clusters)``, any shape.
        target: GT classes (or ``ignore_index``), same number of elements.
        num_classes: ``C``.
        num_clusters: ``K`` (defaults to ``C``).
        matching: ``"hungarian"``, ``"many_to_one"`` or ``"none"``.
        ignore_index: Target value to drop.
        present_only: Average only over classes present (see :func:`mean_iou`).
        criterion: Score used by ``"many_to_one"``.

    Returns:
        The dict of :meth:`ConfusionMatrix.compute`.
    """
    cm = ConfusionMatrix(num_classes, num_clusters, ignore_index=ignore_index)
    cm.update(pred_ids, target)
    return cm.compute(matching, present_only=present_only, criterion=criterion)
