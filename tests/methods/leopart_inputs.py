"""Fixed inputs on which values were pinned from the official Leopart code.

Shared by ``test_leopart.py`` and by the scratch script that ran the official code
(MkuuWaUjinga/leopart @7835701, outside this repository) to compute the pinned numbers.
Everything is built from seeded ``torch.Generator`` draws and hand-written boxes and masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BATCH = 2
PROTOTYPES = 6
DIM = 5
PATCH = 8
GRIDS = [(4, 4), (4, 4), (2, 2), (2, 2)]  # 2 global crops of 32 px, 2 local crops of 16 px
CROP_SIZES = [32, 16]
QUEUE_LENGTH = 8
#: Crop boxes (x1, y1, x2, y2) in the pixels of 64x64 images, [B, V, 4].
BOXES = torch.tensor(
    [
        [
            [0.0, 0.0, 48.0, 48.0],
            [16.0, 8.0, 64.0, 56.0],
            [8.0, 24.0, 32.0, 48.0],
            [30.0, 30.0, 50.0, 50.0],
        ],
        [
            [10.0, 4.0, 58.0, 60.0],
            [0.0, 20.0, 40.0, 64.0],
            [20.0, 10.0, 44.0, 30.0],
            [4.0, 40.0, 24.0, 60.0],
        ],
    ]
)
#: Foreground masks of the two target (global) views, [T, B, 4, 4].
MASKS = torch.tensor(
    [
        [
            [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]],
            [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]],
        ],
        [
            [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
            [[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]],
        ],
    ],
    dtype=torch.bool,
)


def pinned_inputs() -> dict[str, object]:
    """Unit embeddings and prototypes → cosine scores, plus a full queue.

    Returns a dict with ``prototypes [K, D]``, ``teacher_emb`` (2 views ``[B, 4, 4, D]``),
    ``teacher_scores`` / ``student_scores`` (per view ``[B, K, h, w]``), ``queue [T, L, D]``.
    """
    g = torch.Generator().manual_seed(2022)
    prototypes = F.normalize(torch.randn(PROTOTYPES, DIM, generator=g), dim=1)
    teacher_emb = [
        F.normalize(torch.randn(BATCH, h, w, DIM, generator=g), dim=-1) for h, w in GRIDS[:2]
    ]
    student_emb = [
        F.normalize(torch.randn(BATCH, h, w, DIM, generator=g), dim=-1) for h, w in GRIDS
    ]
    queue = F.normalize(torch.randn(2, QUEUE_LENGTH, DIM, generator=g), dim=-1)
    return {
        "prototypes": prototypes,
        "teacher_emb": teacher_emb,
        "teacher_scores": [(e @ prototypes.t()).permute(0, 3, 1, 2) for e in teacher_emb],
        "student_scores": [(e @ prototypes.t()).permute(0, 3, 1, 2) for e in student_emb],
        "queue": queue,
    }


def attention_map() -> torch.Tensor:
    """A hand-built CLS attention ``[1, 2, 36]`` on a 6x6 grid (2 heads).

    Head 0 holds a bright 2x2 blob at rows 1-2, cols 1-2 and an isolated bright patch at
    (5, 5); head 1 a bright patch at (4, 0) and a weak background everywhere.
    """
    head0 = torch.full((6, 6), 0.005)
    head0[1:3, 1:3] = 0.15
    head0[5, 5] = 0.08
    head1 = torch.full((6, 6), 0.01)
    head1[4, 0] = 0.3
    head1[1, 1] = 0.1
    return torch.stack([head0, head1]).reshape(1, 2, 36)
