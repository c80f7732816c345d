"""NeCo's patch-neighbour ordering loss: soft permutations of sorted similarities, cross-crop.

Pariza, Salehi, Sharma, Asano et al., "Near, far: Patch-ordering enhances vision foundation
models' scene understanding", ICLR 2025; official code vpariza/NeCo @3932160, ``src/neco.py``
(``knn_loss``, ``compute_knn_perm_mat``, ``compute_knn_subloss``). Knows nothing of
backbones: it takes per-view embedding grids and crop boxes.

For every target view c (a global crop; the teacher's) and every other view v, on the
intersection of the two crops resampled to an ``o x o`` grid (RoI-Align, as Leopart,
:func:`densessl.ops.geometry.align_to_intersection`), with ``n = o²``::

    Qt = roi_align(T_c, c ∩ v in c's grid)    [B, n, D]   teacher queries   (no gradient)
    Qs = roi_align(S_v, c ∩ v in v's grid)    [B, n, D]   student queries
    R  = shuffled_references(Qt)              [B, n, D]   references (same for both),
         or queue.draw(c)                                 (the DINOv2 configs' queue)
    d(q, r) = cos(q, r)                       [B, n query, n ref]   (or ‖q − r‖₂)
    P  = DiffSort_s(d) per query row          [B, n query, n ref i, n rank j]
    ℓ_cv = − mean_{b, query, i} Σ_j Pt[b, query, i, j] · log Ps[b, query, i, j]
    L  = mean_c  Σ_{v≠c} ℓ_cv / (V − 1)

``P[.., i, j]`` is the soft weight of reference ``i`` at rank ``j`` of the ascending sort
(for cosine, rank 0 is the least similar reference): the cross-entropy compares, for every
reference, the distribution of *where it lands* in the query's ordering. The student sorts
with steepness ``s_s``, the teacher with ``s_t`` (NeCo: 100 both); there is no temperature.

Differences from the official code (the values are otherwise equal; the tests pin them):

* ``log`` of the student's ``P`` clamped at the smallest normal float: where the official
  ``log(0)`` gives ``-inf`` (or NaN with a zero target) this stays finite;
* the queries, similarities and sorts run in float32 whatever the autocast dtype;
* the reference draw is keyed by sample so that processes agree (see
  :mod:`densessl.methods.neco.references`);
* no gradient reaches the teacher through the references (in the official code it does,
  but the teacher is never stepped by the optimiser, so nothing changes).

With a :class:`~densessl.methods.neco.queue.ReferenceQueue` (the DINOv2 configs'
``is_queue_usable``), R is drawn from the queue of target c, which the caller has filled
with this step's teacher patches before the loss, as the official ``shared_step`` does.

Not offered: the ``fg``/``bg`` loss masks; see docs/methods/neco.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.methods.neco.queue import ReferenceQueue
from densessl.methods.neco.references import shuffled_references
from densessl.methods.neco.sorting import DiffSort
from densessl.ops.geometry import align_to_intersection

__all__ = ["SIMILARITIES", "NeCoLoss", "ordering_cross_entropy", "soft_ranks"]

SIMILARITIES = ("cosine", "euclidean")


def soft_ranks(queries: Tensor, references: Tensor, sorter: DiffSort, similarity: str) -> Tensor:
    """Soft permutation matrices of every query's similarities to its image's references.

    Args:
        queries: ``[B, D, o, o]`` aligned embeddings (row-major over the grid).
        references: ``[B, D, o, o]`` the references of each image.
        sorter: a :class:`DiffSort` of size ``n = o²``.
        similarity: ``"cosine"`` (NeCo's configs) or ``"euclidean"`` (``torch.cdist``).

    Returns:
        ``[B, n query, n ref, n rank]`` float32, doubly stochastic over the last two axes.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    batch = queries.shape[0]
    # float32 whatever the autocast dtype: bf16 cosines (3 digits) would reorder close
    # references at steepness 100.
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = queries.float().flatten(2).transpose(1, 2)  # [B, n, D]
        r = references.float().flatten(2).transpose(1, 2)
        if similarity == "cosine":
            q, r = F.normalize(q, dim=-1), F.normalize(r, dim=-1)
            scores = torch.einsum("bqd,brd->bqr", q, r)
        else:
            scores = torch.cdist(q, r, p=2.0, compute_mode="use_mm_for_euclid_dist_if_necessary")
        count = scores.shape[-1]
        _, perm = sorter(scores.reshape(-1, count))
    return perm.reshape(batch, -1, count, count)


def ordering_cross_entropy(target: Tensor, prediction: Tensor) -> Tensor:
    """``− mean_{b, query, i} Σ_j target · log prediction`` over ``[B, n, n ref, n rank]``."""
    log_p = prediction.clamp_min(torch.finfo(prediction.dtype).tiny).log()
    return -(target * log_p).sum(dim=-1).mean()


class NeCoLoss(nn.Module):
    """NeCo's loss (module docstring) over all (target c, view v ≠ c) pairs.

    Args:
        output_size: ``o``, the RoI-Align grid; ``o²`` queries and references per image
            (NeCo: 7, so 49).
        student_steepness: ``s_s`` of the student's sorting network (100).
        teacher_steepness: ``s_t`` of the teacher's (100).
        network: ``"bitonic"`` (NeCo's ``sort_net``) or ``"odd_even"``.
        distribution: the comparators' relaxation (``"cauchy"``, ``diffsort``'s default).
        art_lambda: λ of the ``logistic_phi`` relaxation (0.25).
        similarity: ``"cosine"`` (every NeCo config) or ``"euclidean"`` (the code default).
    """

    def __init__(
        self,
        output_size: int = 7,
        student_steepness: float = 100.0,
        teacher_steepness: float = 100.0,
        network: str = "bitonic",
        distribution: str = "cauchy",
        art_lambda: float = 0.25,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
        count = output_size * output_size
        self.output_size = output_size
        self.similarity = similarity
        self.student_sorter = DiffSort(count, network, student_steepness, distribution, art_lambda)
        self.teacher_sorter = DiffSort(count, network, teacher_steepness, distribution, art_lambda)

    def forward(
        self,
        teacher: Sequence[Tensor],
        student: Sequence[Tensor],
        boxes: Tensor,
        keys: Tensor | None = None,
        flips: Tensor | None = None,
        queue: ReferenceQueue | None = None,
    ) -> Tensor:
        """The float32 scalar loss.

        Args:
            teacher: T grids ``[B, D, h_c, w_c]``: the teacher's embeddings of target views
                0..T-1 (the global crops).
            student: V grids ``[B, D, h_v, w_v]``: the student's embeddings of every view,
                the targets' views first.
            boxes: ``[B, V, 4]`` crop boxes in image pixels.
            keys: ``[B]`` sample keys for the reference draw (None: ``torch.randperm``).
            flips: ``[B, V]`` flip flags or None.
            queue: draw the references of target c from ``queue`` (already holding this
                step's teacher patches) instead of this pair's aligned teacher patches.
        """
        num_targets, num_views = len(teacher), len(student)
        if not 1 <= num_targets <= num_views or num_views < 2:
            raise ValueError(
                f"need at least 2 views and 1..V targets, got {num_targets} targets, "
                f"{num_views} views"
            )
        if boxes.dim() != 3 or boxes.shape[1:] != (num_views, 4):
            raise ValueError(f"boxes must be [B, {num_views}, 4], got {tuple(boxes.shape)}")
        boxes = boxes.float()
        total = boxes.new_zeros(())
        for c in range(num_targets):
            flips_c = None if flips is None else flips[:, c]
            subtotal = boxes.new_zeros(())
            for v in range(num_views):
                if v == c:
                    continue
                flips_v = None if flips is None else flips[:, v]
                with torch.no_grad():
                    queries_t, _ = align_to_intersection(
                        teacher[c].float(), boxes[:, c], boxes[:, v], flips_c, self.output_size
                    )
                    salt = c * num_views + v
                    if queue is None:
                        refs = shuffled_references(queries_t, keys, salt)
                    else:
                        batch, dim = queries_t.shape[:2]
                        side = self.output_size
                        drawn = queue.draw(c, batch, side * side, keys, salt)
                        refs = drawn.reshape(batch, side, side, dim).permute(0, 3, 1, 2)
                    target = soft_ranks(queries_t, refs, self.teacher_sorter, self.similarity)
                queries_s, _ = align_to_intersection(
                    student[v].float(), boxes[:, v], boxes[:, c], flips_v, self.output_size
                )
                prediction = soft_ranks(queries_s, refs, self.student_sorter, self.similarity)
                subtotal = subtotal + ordering_cross_entropy(target, prediction)
            total = total + subtotal / (num_views - 1)
        return total / num_targets
