"""Differentiable sorting networks (relaxed bitonic / odd-even comparators) in torch.

Petersen, Borgelt, Kuehne & Deussen, "Differentiable Sorting Networks for Scalable Sorting
and Ranking Supervision", ICML 2021, and "Monotonic Differentiable Sorting Networks", ICLR
2022. NeCo uses them through the ``diffsort`` package (PyPI ``diffsort==0.2.0``,
``DiffSortNet``, checked against it in ``tests/methods/test_neco_sorting.py``); this is an
independent implementation with the same wiring and relaxations.

A sorting network is a fixed sequence of layers of disjoint comparators ``(a, b)``. The exact
comparator writes ``min(x_a, x_b)`` to one wire and the max to the other; the relaxed one
mixes them with ``α = f(s · (x_b − x_a))``::

    min ← α·x_a + (1 − α)·x_b          max ← (1 − α)·x_a + α·x_b

``f`` is a sigmoid-like CDF and ``s`` the *steepness* (``s → ∞`` is exact sorting). The same
column mixing applied to the identity gives the soft permutation matrix ``P [R, n, n]`` with
``sorted = x @ P``: ``P[r, i, j]`` is the weight of input ``i`` at output rank ``j``
(ascending). ``P`` is doubly stochastic.

Relaxations ``f(v)`` of ``v = s · (x_b − x_a)`` (``diffsort``'s ``distribution`` names):

* ``cauchy`` (default of ``diffsort`` and so NeCo's): ``atan(v) / π + ½``;
* ``logistic``: ``sigmoid(v)``;
* ``logistic_phi``: ``sigmoid(v / (|x_a − x_b| + 1e-10) ** λ)``, λ = ``art_lambda`` (0.25);
* ``gaussian``: ``Φ(v)``, the standard normal CDF;
* ``reciprocal``: ``½ (v / (2 + |v|) + 1)``.

Bitonic wiring for ``n`` not a power of two (as ``diffsort``): the network of ``2^k ≥ n``
wires is built and the first ``2^k − n`` wires are dropped; a comparator with one dropped
wire leaves the other wire as it is, one with two dropped wires is removed. The network has
``k (k + 1) / 2`` layers (21 for NeCo's 49 references). The odd-even transposition network
has ``n`` layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DISTRIBUTIONS", "NETWORKS", "DiffSort", "bitonic_layers", "odd_even_layers"]

DISTRIBUTIONS = ("cauchy", "logistic", "logistic_phi", "gaussian", "reciprocal")
NETWORKS = ("bitonic", "odd_even")

Layer = list[tuple[int, int, int, int]]  # comparators: (wire a, wire b, min to, max to)


def bitonic_layers(n: int) -> list[Layer]:
    """Comparator layers of the bitonic network on ``n`` wires (see the module docstring).

    Returns:
        One list per layer of ``(a, b, min_to, max_to)``: read wires ``a`` and ``b``, write
        the soft minimum to ``min_to`` and the maximum to ``max_to`` (``{a, b}``). Wires that
        a layer does not list are unchanged.
    """
    if n < 1:
        raise ValueError(f"a sorting network needs n >= 1 wires, got {n}")
    blocks = math.ceil(math.log2(n)) if n > 1 else 0
    size = 2**blocks
    dropped = size - n
    layers: list[Layer] = []
    for block in range(blocks):
        for step in range(block + 1):
            distance = 2 ** (block - step)
            layer: Layer = []
            for start in range(0, size, 2 * distance):
                for offset in range(distance):
                    a, b = start + offset, start + offset + distance
                    if a < dropped or b < dropped:
                        continue  # one dropped wire: the other stays; two: no comparator
                    descending = ((start + offset) // 2 ** (block + 1)) % 2 == 1
                    low, high = (b, a) if descending else (a, b)
                    layer.append((a - dropped, b - dropped, low - dropped, high - dropped))
            layers.append(layer)
    return layers


def odd_even_layers(n: int) -> list[Layer]:
    """The odd-even transposition network: ``n`` layers, neighbours (i, i+1) alternating."""
    if n < 1:
        raise ValueError(f"a sorting network needs n >= 1 wires, got {n}")
    return [[(i, i + 1, i, i + 1) for i in range(layer % 2, n - 1, 2)] for layer in range(n)]


def _mixing(distribution: str, a: Tensor, b: Tensor, steepness: float, art_lambda: float) -> Tensor:
    """α of every comparator: the weight of ``a`` in the soft minimum."""
    v = steepness * (b - a)
    if distribution == "cauchy":
        return 1 / math.pi * torch.atan(v) + 0.5
    if distribution == "logistic":
        return torch.sigmoid(v)
    if distribution == "logistic_phi":
        return torch.sigmoid(v / ((a - b).abs() + 1e-10).pow(art_lambda))
    if distribution == "gaussian":
        return 0.5 + 0.5 * torch.erf(v / math.sqrt(2.0))
    if distribution == "reciprocal":
        return 0.5 * (v / (2 + v.abs()) + 1)
    raise ValueError(f"unknown distribution {distribution!r}; choose from {DISTRIBUTIONS}")


class DiffSort(nn.Module):
    """Relaxed sorting network: values along the last axis, sorted ascending.

    Args:
        size: n, values per row (NeCo: the 49 references of a 7x7 RoI grid).
        network: ``"bitonic"`` (NeCo's ``sort_net``) or ``"odd_even"``.
        steepness: s, the comparators' sharpness (NeCo: 100 for student and teacher;
            larger = closer to a hard permutation).
        distribution: the relaxation ``f`` (module docstring; NeCo: ``"cauchy"``).
        art_lambda: λ of ``logistic_phi`` (0.25; unused otherwise).

    Shapes:
        ``x [R, n]`` → ``(sorted [R, n], P [R, n, n])``, ``sorted = x @ P`` (float
        rounding aside); P's rows are inputs, its columns output ranks.
    """

    def __init__(
        self,
        size: int,
        network: str = "bitonic",
        steepness: float = 10.0,
        distribution: str = "cauchy",
        art_lambda: float = 0.25,
    ) -> None:
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"unknown sorting network {network!r}; choose from {NETWORKS}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}; choose from {DISTRIBUTIONS}")
        if not steepness > 0:
            raise ValueError(f"steepness must be > 0, got {steepness}")
        self.size = size
        self.network = network
        self.steepness = float(steepness)
        self.distribution = distribution
        self.art_lambda = float(art_lambda)
        layers = bitonic_layers(size) if network == "bitonic" else odd_even_layers(size)
        # The values are never moved back into wire order between layers: ``column[w]`` is
        # where wire w currently lives; each layer reads its a / b wires from there and
        # writes [mins, maxes, untouched wires] as new columns. Per layer: the columns read
        # as a, b and kept, as plain lists (no buffers: checkpoints do not depend on it).
        self._plan: list[tuple[list[int], list[int], list[int]]] = []
        column = list(range(size))
        for layer in layers:
            written = [c[2] for c in layer] + [c[3] for c in layer]
            touched = set(written)
            untouched = [w for w in range(size) if w not in touched]
            self._plan.append(
                (
                    [column[c[0]] for c in layer],
                    [column[c[1]] for c in layer],
                    [column[w] for w in untouched],
                )
            )
            column = [0] * size
            for position, wire in enumerate(written + untouched):
                column[wire] = position
        self._final = column

    @property
    def num_layers(self) -> int:
        return len(self._plan)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, network={self.network}, steepness={self.steepness}, "
            f"distribution={self.distribution}"
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.size:
            raise ValueError(f"DiffSort({self.size}) expects [R, {self.size}], got {list(x.shape)}")
        rows, n = x.shape
        # P is kept transposed, [R, wire, input]: gathering wires then takes whole rows.
        perm_t = torch.eye(n, dtype=x.dtype, device=x.device).expand(rows, n, n)
        device = x.device
        for columns_a, columns_b, kept in self._plan:
            ia = torch.tensor(columns_a, device=device, dtype=torch.long)
            ib = torch.tensor(columns_b, device=device, dtype=torch.long)
            iu = torch.tensor(kept, device=device, dtype=torch.long)
            a, b = x[:, ia], x[:, ib]
            alpha = _mixing(self.distribution, a, b, self.steepness, self.art_lambda)
            low = alpha * a + (1 - alpha) * b
            high = (1 - alpha) * a + alpha * b
            x = torch.cat([low, high, x[:, iu]], dim=1)
            pa, pb = perm_t[:, ia], perm_t[:, ib]
            w = alpha.unsqueeze(2)
            p_low = w * pa + (1 - w) * pb
            p_high = (1 - w) * pa + w * pb
            perm_t = torch.cat([p_low, p_high, perm_t[:, iu]], dim=1)
        final = torch.tensor(self._final, device=device, dtype=torch.long)
        return x[:, final], perm_t[:, final].transpose(1, 2)
