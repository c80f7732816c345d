"""Leopart's dense clustering loss: crop-pair alignment, masked cross-entropy, feature queue.

Ziegler & Asano, "Self-Supervised Learning of Object Parts for Semantic Segmentation", CVPR
2022, §3 (Eq. 2-4); official code MkuuWaUjinga/leopart @7835701 (``src/leopart.py``
``spatial_loss``). Knows nothing of backbones: it takes Sinkhorn targets, student scores,
crop boxes and foreground masks.

For every target view t (a global crop) and every other view v, with the intersection
``I = crop_t ∩ crop_v`` (image pixels) mapped into each view's token grid
(:func:`densessl.ops.geometry.box_to_frame`)::

    Qa   = roi_align(Q_t, I in t's grid)             [B, K, o, o]  teacher probabilities
    Pa   = softmax_K(roi_align(S_v, I in v's grid) / τ)              student prediction
    M    = roi_align(mask_t, I in t's grid) >= 1     [B, o, o]     fully-foreground cells
    ℓ_tv = − Σ_{b,i,j} M · Σ_k Qa · log Pa / Σ M     (0 when Σ M = 0)
    L    = mean_t  Σ_{v≠t} ℓ_tv / (V − 1)

``o`` = ``output_size`` (7). Without masks (``loss_mask="all"``) ``M`` is all ones, i.e. the
mean over every image and cell. RoI-Align (``aligned=True``, adaptive sampling) is applied to
the student's *scores* before the softmax and to the teacher's *probabilities*, as in the
official code. :func:`densessl.ops.geometry.roi_align_grid` mirrors flipped crops back, so flips
would align correctly, but Leopart's presets use none.

Deviations from the official code (results are otherwise identical; the tests pin them):

* ``M`` uses ``>= 1 − mask_tolerance`` (1e-4) against float rounding of RoI-Align
  (``mask_tolerance=0`` reproduces the official ``>= 1``);
* image pairs whose crops do not intersect get weight 0 (the official code asserts none);
* ``log_softmax`` instead of ``log(softmax)``.

Kept as in the code: a pair with an empty mask contributes 0 but still counts in the
``V − 1`` denominator (the official ``spatial_loss`` divides by ``np.sum(self.nmb_crops) - 1``),
and the mask sum runs over the whole batch of all processes (the cell counts are
all-reduced). Details: docs/methods/leopart.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.ops.distributed import all_reduce_sum, world_size
from densessl.ops.geometry import align_to_intersection
from densessl.ops.keyed_random import keyed_uniform

__all__ = ["EmbeddingQueue", "align_to_intersection", "leopart_loss"]

MASK_TOLERANCE = 1e-4


def leopart_loss(
    targets: Sequence[Tensor],
    student_scores: Sequence[Tensor],
    boxes: Tensor,
    temperature: float,
    masks: Sequence[Tensor] | None = None,
    flips: Tensor | None = None,
    output_size: int = 7,
    mask_tolerance: float = MASK_TOLERANCE,
) -> Tensor:
    """Leopart's loss (module docstring) over all (target t, view v ≠ t) pairs.

    Args:
        targets: T tensors ``[B, K, h_t, w_t]``: Sinkhorn probabilities of target views
            0..T-1 (the global crops), summing to 1 over K.
        student_scores: V tensors ``[B, K, h_v, w_v]``: the student's prototype scores
            (cosines, before the temperature) of every view, targets' views first.
        boxes: ``[B, V, 4]`` crop boxes in image pixels.
        temperature: τ of the student softmax (0.1).
        masks: None (``loss_mask="all"``) or T tensors ``[B, h_t, w_t]`` bool: the tokens of
            target view t the loss is computed on (foreground, or background).
        flips: ``[B, V]`` flip flags or None.
        output_size: RoI-Align output side (7).
        mask_tolerance: a cell counts when its aligned mask is ``>= 1 − mask_tolerance``.

    Returns:
        The float32 scalar loss.
    """
    num_targets, num_views = len(targets), len(student_scores)
    if not 1 <= num_targets <= num_views or num_views < 2:
        raise ValueError(
            f"need at least 2 views and 1..V targets, got {num_targets} targets, {num_views} views"
        )
    if boxes.dim() != 3 or boxes.shape[1:] != (num_views, 4):
        raise ValueError(f"boxes must be [B, {num_views}, 4], got {tuple(boxes.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if masks is not None and len(masks) != num_targets:
        raise ValueError(f"expected {num_targets} masks, got {len(masks)}")
    boxes = boxes.float()
    sums: list[Tensor] = []  # per (t, v) pair: Σ weight · cross-entropy, and Σ weight
    counts: list[Tensor] = []
    for t in range(num_targets):
        flips_t = None if flips is None else flips[:, t]
        for v in range(num_views):
            if v == t:
                continue
            flips_v = None if flips is None else flips[:, v]
            q, nonempty = align_to_intersection(
                targets[t].float(), boxes[:, t], boxes[:, v], flips_t, output_size
            )
            s, _ = align_to_intersection(
                student_scores[v].float(), boxes[:, v], boxes[:, t], flips_v, output_size
            )
            cross_entropy = -(q * F.log_softmax(s / temperature, dim=1)).sum(dim=1)  # [B, o, o]
            weight = nonempty.float()[:, None, None].expand_as(cross_entropy)
            if masks is not None:
                m, _ = align_to_intersection(
                    masks[t].float()[:, None], boxes[:, t], boxes[:, v], flips_t, output_size
                )
                weight = weight * (m[:, 0] >= 1.0 - mask_tolerance).float()
            sums.append((cross_entropy * weight).sum())
            counts.append(weight.sum())
    # Each pair's loss is a mean over its counted cells of the *whole* batch: with W
    # processes the cell counts are summed over processes (one all-reduce, no gradient) and
    # each process divides its own sum by the global count / W, so that DDP's average of the
    # W losses (and of their gradients) is the single-process value.
    denominators = torch.stack(counts).detach()
    if world_size() > 1:
        denominators = all_reduce_sum(denominators.clone()).clamp_min(1.0) / world_size()
    else:
        denominators = denominators.clamp_min(1.0)
    total = boxes.new_zeros(())
    pair = 0
    for _ in range(num_targets):
        subtotal = boxes.new_zeros(())
        for _ in range(num_views - 1):
            subtotal = subtotal + sums[pair] / denominators[pair]
            pair += 1
        total = total + subtotal / (num_views - 1)
    return total / num_targets


class EmbeddingQueue(nn.Module):
    """First-in-first-out store of past teacher embeddings, one queue per target view.

    Leopart scores the queue's embeddings against the prototypes and prepends them to the
    current tokens before Sinkhorn-Knopp, so that small batches still spread over all K
    prototypes. The queue is used only once it is full (it has received ``length`` rows).

    Args:
        num_targets: T, target views (one queue each; Leopart: the 2 global crops).
        length: rows per queue on this process (Leopart: 8192 / processes).
        dim: embedding size (the projection's output, 256).

    Buffers (saved in checkpoints, so resumes are exact): ``embeddings [T, length, dim]``,
    ``position [T]`` (next row to write) and ``count [T]`` (rows received, capped at
    ``length``). Rows are written as a ring; Sinkhorn-Knopp is invariant to the order of its
    samples, so this equals the official shift-register.
    """

    embeddings: Tensor
    position: Tensor
    count: Tensor

    def __init__(self, num_targets: int, length: int, dim: int) -> None:
        super().__init__()
        if num_targets < 1 or length < 1 or dim < 1:
            raise ValueError(
                f"queue needs num_targets, length, dim >= 1, got {num_targets}, {length}, {dim}"
            )
        self.length = length
        self.register_buffer("embeddings", torch.zeros(num_targets, length, dim))
        self.register_buffer("position", torch.zeros(num_targets, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_targets, dtype=torch.long))

    def full(self, target: int) -> Tensor:
        """Bool scalar tensor: queue ``target`` has received ``length`` rows (no host sync)."""
        return self.count[target] >= self.length

    @torch.no_grad()
    def push(
        self,
        target: int,
        embeddings: Tensor,
        keep: Tensor | None = None,
        max_rows: int = 320,
        sample_keys: Tensor | None = None,
    ) -> None:
        """Append up to ``max_rows`` randomly chosen rows of ``embeddings`` where ``keep``.

        Args:
            target: which queue.
            embeddings: ``[N, dim]`` candidate rows (the teacher's embeddings of view t).
            keep: ``[N]`` bool, the eligible rows (Leopart: the tokens inside the loss mask);
                None = all. Fewer eligible rows than ``max_rows`` push only those (the
                official code fails there).
            max_rows: rows pushed per call at most (Leopart: 10 x batch size), capped at the
                queue length.
            sample_keys: ``[B]`` int64 sample keys (``batch["key"]``), ``N = B x n`` rows
                grouped per image. Each image then contributes up to ``max_rows // B`` of its
                own eligible rows, chosen by :mod:`densessl.ops.keyed_random`: the rows pushed
                depend only on the images, not on which process holds them, so W processes
                with ``B / W`` images fill their ``length / W`` queues with exactly the rows
                one process pushes (as long as every image has that many eligible rows).

        Without ``sample_keys`` the rows are drawn from the whole batch with the global RNG
        of the embeddings' device. No host sync either way.
        """
        if sample_keys is not None:
            batch = sample_keys.shape[0]
            if batch < 1 or embeddings.shape[0] % batch:
                raise ValueError(
                    f"{embeddings.shape[0]} rows do not split into {batch} images' tokens"
                )
            per_image = embeddings.shape[0] // batch
            rows_per_image = min(max_rows // batch, per_image)
            rows = min(rows_per_image * batch, self.length)
            if rows <= 0:
                return
            scores = keyed_uniform(sample_keys.to(embeddings.device), target, per_image)
            if keep is not None:
                scores = torch.where(keep.reshape(batch, per_image), scores, -1.0)
            top, local = scores.topk(rows_per_image, dim=1)
            offsets = torch.arange(batch, device=local.device)[:, None] * per_image
            top, index = top.flatten()[:rows], (local + offsets).flatten()[:rows]
            # Eligible rows first, in image order (a stable sort: no host sync).
            order = torch.argsort((top < 0).to(torch.uint8), stable=True)
            top, index = top[order], index[order]
        else:
            rows = min(max_rows, embeddings.shape[0], self.length)
            if rows <= 0:
                return
            keys = torch.rand(embeddings.shape[0], device=embeddings.device)
            if keep is not None:
                keys = torch.where(keep, keys, torch.full_like(keys, -1.0))
            top, index = keys.topk(rows)  # eligible rows come first
        valid = top >= 0
        slots = (self.position[target] + torch.arange(rows, device=index.device)) % self.length
        queue = self.embeddings[target]
        new = embeddings[index].to(queue.dtype)
        queue[slots] = torch.where(valid[:, None], new, queue[slots])
        added = valid.sum()
        self.position[target] = (self.position[target] + added) % self.length
        self.count[target] = torch.clamp(self.count[target] + added, max=self.length)
