"""Community detection on the cluster co-occurrence graph (Leopart, Ziegler & Asano, CVPR 2022).

Leopart (MkuuWaUjinga/leopart @840e365, ``experiments/fully_unsup_seg/fully_unsup_seg.py``
``create_matrix`` and ``start_unsup_seg``) merges the K foreground clusters (plus the
background id K) into object-level segments:

1. **Co-occurrence** (:func:`cooccurrence_matrix`): per image, skimage's ``greycomatrix`` of
   the label-sized cluster map for distances {1, 2} and the angles 0, π/4, π/2, 3π/4, π,
   **4π/3**, 3π/2, 7π/4 (as written in the code; 5π/4 was meant). The counts are summed over
   distances and angles, the diagonal is zeroed, each row is normalised; these rows are
   summed over images and divided by the number of images where the cluster touches another
   one, giving a row-stochastic ``A``. skimage rounds ``(sin θ·d, cos θ·d)`` to the pixel
   offset, so the typo only changes the distance-2 offset: (-2, -1) instead of (-1, -1);
   ``fix_angle_typo=True`` uses 5π/4.
2. **Graph** (:func:`graph_edges`): undirected edge ``(i, j)`` of weight
   ``min(A_ij, A_ji)``, added only when both reach ``weight_threshold``.
3. **Communities** (:func:`find_communities`): two-level undirected **Infomap** with a
   ``markov_time`` and ``preferred_number_of_modules`` (the number of foreground classes,
   20 on VOC), as in the paper; **Leiden** (``leidenalg``, modularity with a
   ``resolution``) is the alternative here. Clusters without an edge above the threshold
   keep merged id 0; communities get ids 1, 2, ...

Infomap 2.16 accepts seeds >= 1 only; Leopart ran seeds 0-9 with an older release.
Both backends are optional dependencies: ``pip install densessl[unsupervised]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COMMUNITY_METHODS",
    "LEOPART_ANGLES",
    "cooccurrence_matrix",
    "cooccurrence_offsets",
    "find_communities",
    "graph_edges",
    "merge_clusters",
]

COMMUNITY_METHODS = ("infomap", "leiden")

#: Leopart's angle list (``4π/3`` is the code's typo for ``5π/4``).
LEOPART_ANGLES = tuple(a * math.pi for a in (0.0, 0.25, 0.5, 0.75, 1.0, 4.0 / 3.0, 1.5, 1.75))


def cooccurrence_offsets(
    distances: Sequence[int] = (1, 2), fix_angle_typo: bool = False
) -> list[tuple[int, int]]:
    """Pixel offsets ``(rows, cols)`` of skimage's ``greycomatrix`` for Leopart's angles.

    skimage pairs pixel ``(r, c)`` with ``(r + round(sin θ·d), c + round(cos θ·d))``.
    """
    angles = list(LEOPART_ANGLES)
    if fix_angle_typo:
        angles[5] = 1.25 * math.pi
    return [(round(math.sin(a) * d), round(math.cos(a) * d)) for d in distances for a in angles]


def cooccurrence_matrix(
    maps: Tensor,
    num_clusters: int,
    offsets: Sequence[tuple[int, int]] | None = None,
    max_bins: int = 1 << 24,
) -> Tensor:
    """Leopart's row-stochastic cluster co-occurrence matrix ``A`` (module docstring, step 1).

    Args:
        maps: ``[N, H, W]`` integer cluster maps with ids in ``[0, num_clusters)``.
        num_clusters: ``L`` (foreground clusters plus the background id).
        offsets: Pixel offsets (default :func:`cooccurrence_offsets` ``()``).
        max_bins: Bound on ``images per chunk * L * L`` (memory of the counts).

    Returns:
        float64 ``[L, L]``; rows of clusters that never touch another cluster are zero.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got {tuple(maps.shape)}")
    offsets = list(offsets if offsets is not None else cooccurrence_offsets())
    n, height, width = maps.shape
    big = num_clusters * num_clusters
    chunk = max(1, max_bins // big)
    total = torch.zeros(num_clusters, num_clusters, dtype=torch.float64, device=maps.device)
    appearances = torch.zeros(num_clusters, dtype=torch.float64, device=maps.device)
    for start in range(0, n, chunk):
        part = maps[start : start + chunk].long()
        m = part.shape[0]
        base = (torch.arange(m, device=part.device) * big).view(m, 1, 1)
        counts = torch.zeros(m * big, dtype=torch.int64, device=part.device)
        for dr, dc in offsets:
            r0, r1 = max(0, -dr), height - max(0, dr)
            c0, c1 = max(0, -dc), width - max(0, dc)
            if r1 <= r0 or c1 <= c0:
                continue
            src = part[:, r0:r1, c0:c1]
            dst = part[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc]
            counts += torch.bincount(
                (base + src * num_clusters + dst).reshape(-1), minlength=m * big
            )
        counts = counts.view(m, num_clusters, num_clusters).to(torch.float64)
        counts.diagonal(dim1=1, dim2=2).zero_()
        rows = counts.sum(dim=2, keepdim=True)
        total += torch.where(rows > 0, counts / rows.clamp_min(1), torch.zeros_like(counts)).sum(0)
        appearances += (rows[..., 0] > 0).sum(dim=0).to(torch.float64)
    return torch.where(
        appearances.unsqueeze(1) > 0, total / appearances.clamp_min(1).unsqueeze(1), 0.0
    )


def graph_edges(matrix: Tensor, weight_threshold: float) -> list[tuple[int, int, float]]:
    """Undirected edges ``(i, j, min(A_ij, A_ji))``, ``i <= j``, where both reach the threshold."""
    a = matrix.detach().to(torch.float64).cpu()
    weight = torch.minimum(a, a.T)
    both = torch.triu(weight >= weight_threshold)
    return [(int(i), int(j), float(weight[i, j])) for i, j in both.nonzero().tolist()]


def _require(module: str, method: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"community detection with {method!r} needs the {module!r} package: "
            "pip install 'densessl[unsupervised]' (infomap, leidenalg, igraph)"
        ) from err


def find_communities(
    edges: Sequence[tuple[int, int, float]],
    method: str = "infomap",
    seed: int = 1,
    markov_time: float = 1.0,
    resolution: float = 1.0,
    num_modules: int | None = None,
) -> dict[int, int]:
    """Communities of an undirected weighted graph given by its edges.

    Args:
        edges: ``(i, j, weight)`` triples; nodes are the ids that occur in them.
        method: ``"infomap"`` (two-level, undirected; Leopart) or ``"leiden"``
            (``leidenalg`` RB-configuration modularity).
        seed: Random seed (Infomap needs ``>= 1``).
        markov_time: Infomap's Markov time (larger: fewer modules).
        resolution: Leiden's resolution parameter (larger: more communities).
        num_modules: Infomap's ``preferred_number_of_modules`` (``None``: not set).

    Returns:
        ``{node: community}`` with communities numbered 1, 2, ... by first appearance in
        node order.
    """
    if method not in COMMUNITY_METHODS:
        raise ValueError(f"method must be one of {COMMUNITY_METHODS}, got {method!r}")
    if not edges:
        return {}
    if method == "infomap":
        infomap = _require("infomap", method)
        options = {"two_level": True, "directed": False, "seed": int(seed)}
        options["markov_time"] = float(markov_time)
        if num_modules is not None:
            options["preferred_number_of_modules"] = int(num_modules)
        result = infomap.run(list(edges), options=infomap.Options(**options))
        raw = {int(node): int(module) for node, module in result.modules().items()}
    else:
        igraph = _require("igraph", method)
        leidenalg = _require("leidenalg", method)
        nodes = sorted({int(i) for e in edges for i in e[:2]})
        index = {node: i for i, node in enumerate(nodes)}
        graph = igraph.Graph(n=len(nodes), edges=[(index[i], index[j]) for i, j, _ in edges])
        graph.es["weight"] = [float(w) for *_, w in edges]
        partition = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            weights="weight",
            resolution_parameter=float(resolution),
            seed=int(seed),
        )
        raw = dict(zip(nodes, partition.membership, strict=True))
    renumber: dict[int, int] = {}
    out = {}
    for node in sorted(raw):
        out[node] = renumber.setdefault(raw[node], len(renumber) + 1)
    return out


def merge_clusters(communities: dict[int, int], num_clusters: int) -> Tensor:
    """int64 ``[num_clusters]`` merged id of every cluster (0 for clusters in no community)."""
    mapping = torch.zeros(num_clusters, dtype=torch.int64)
    for node, community in communities.items():
        mapping[node] = community
    return mapping
