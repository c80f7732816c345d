"""NeCo's differentiable sorting network against ``diffsort`` and against exact sorting.

Pinned values come from PyPI ``diffsort==0.2.0`` (``DiffSortNet("bitonic", n, steepness=s)``,
default ``distribution="cauchy"``), the package vpariza/NeCo @3932160 pins
(``INSTALLATION.md``) and calls in ``src/neco.py`` ``NeCo.on_train_epoch_start``; run once on
CPU in float64 from a scratch folder (torch 2.14); its code is not part of this repository.
"""

from __future__ import annotations

import math

import pytest
import torch

from densessl.methods.neco.sorting import DISTRIBUTIONS, DiffSort, bitonic_layers, odd_even_layers


def _grid(rows: int, offset: float, dim: int = 6) -> torch.Tensor:
    """Deterministic test values (no RNG): ``[rows, dim]`` float32."""
    i = torch.arange(rows * dim, dtype=torch.float64).reshape(rows, dim)
    return (torch.sin(0.37 * i + offset) + 0.5 * torch.cos(1.3 * i * (offset + 1))).float()


X5 = _grid(2, 0.3)[:, :5].double()
X49 = torch.cat([_grid(49, 0.2)[:, :1].T, _grid(49, 1.1)[:, :1].T]).double()

#: diffsort bitonic n=5, steepness 3: P of X5 (P[r, i, j], input i at rank j).
PINNED_P5 = [
    [
        [
            0.3084279871018841,
            0.2036458072583211,
            0.34895942393246043,
            0.07154206422955839,
            0.06742471747777601,
        ],
        [
            0.29158520277327016,
            0.28985646241945484,
            0.2181736633356471,
            0.09962452812331835,
            0.10076014334830957,
        ],
        [
            0.3154587625359855,
            0.2780774723556547,
            0.2138685929176547,
            0.0956330303246572,
            0.09696214186604804,
        ],
        [
            0.04197601980345841,
            0.1156862402219353,
            0.1131985122876709,
            0.3650431234701575,
            0.36409610421677785,
        ],
        [
            0.042552027785401854,
            0.11273401774463415,
            0.10579980752656692,
            0.3681572538523086,
            0.3707568930910885,
        ],
    ],
    [
        [
            0.09998294949025727,
            0.06501156625731064,
            0.49344770996583354,
            0.19019068434117914,
            0.15136708994541936,
        ],
        [
            0.033731877888081956,
            0.09096389143891775,
            0.1274425527075431,
            0.35587076359504954,
            0.39199091437040784,
        ],
        [
            0.03775662269480831,
            0.08630134505890437,
            0.20242587484840935,
            0.33907263896452633,
            0.33444351843335174,
        ],
        [
            0.41398294784705175,
            0.37871124781040816,
            0.08873918849116783,
            0.0575397392308261,
            0.061026876620546164,
        ],
        [
            0.41454560207980073,
            0.37901194943445915,
            0.08794467398704624,
            0.057326173868419,
            0.061171600630274936,
        ],
    ],
]
#: d/dx of sum(P * cos(arange(25)).reshape(5, 5)) for X5.
PINNED_P5_GRAD = [
    [
        -2.0992401986031437,
        0.34603933945283066,
        0.7727902255881108,
        0.5784377132641753,
        0.4019729202980269,
    ],
    [
        -0.061028960353435,
        -0.46169957872305356,
        0.15580729047474964,
        0.21239912419337192,
        0.15452212440836716,
    ],
]
#: diffsort bitonic n=49 (NeCo's 7x7 references), steepness 100 (NeCo's), on X49.
PINNED_P49_ROW = {
    (0, 0): [
        0.0014659020612238106,
        4.9463302490181446e-05,
        9.511280448766038e-06,
        4.7622539762784476e-05,
        8.166585970335096e-05,
        0.001564722150616961,
        0.00014687605755003775,
        4.098461937381128e-05,
    ],
    (1, 7): [
        0.00010751906259807357,
        0.0002790946234116869,
        0.005411873433119734,
        0.000623290597761921,
        0.0006271692374660943,
        0.02853862400402893,
        0.03068732176741166,
        0.03849606560373087,
    ],
}
#: d/dx of sum(P * cos(arange(49*49)).reshape(49, 49)) for X49: first 6 of row 0, sum |.|.
PINNED_P49_GRAD = [
    0.01412348075220369,
    -10.613292678010968,
    4.210980360441535,
    -3.831996152652913,
    -10.11740976567794,
    -0.5186449371422442,
]
PINNED_P49_GRAD_ABS_SUM = 490.11566542848817


def test_soft_permutation_matches_diffsort_n5():
    x = X5.clone().requires_grad_()
    _, perm = DiffSort(5, "bitonic", steepness=3.0)(x)
    assert torch.allclose(perm, torch.tensor(PINNED_P5, dtype=torch.float64), atol=1e-14)
    (perm * torch.cos(torch.arange(25.0)).double().reshape(5, 5)).sum().backward()
    assert torch.allclose(x.grad, torch.tensor(PINNED_P5_GRAD, dtype=torch.float64), atol=1e-12)


#: diffsort odd-even n=5, steepness 3, first row of X5's P, Cauchy and logistic relaxations.
PINNED_ODD_EVEN_P5_ROW0 = {
    "cauchy": [
        [
            0.2762302335092618,
            0.2843207298880253,
            0.2897135926319394,
            0.124362789091575,
            0.025372654879198403,
        ],
        [
            0.34411062807083226,
            0.34357758250351245,
            0.22199747812579548,
            0.07917028850568861,
            0.011144022794171092,
        ],
        [
            0.3076793496538653,
            0.29433930264207886,
            0.21125754059145144,
            0.12948610427623958,
            0.057237702836364854,
        ],
        [
            0.06478263468049539,
            0.06849715826358303,
            0.18258775445989162,
            0.38314246061727897,
            0.30098999197875104,
        ],
        [
            0.007197154085545235,
            0.00926522670280026,
            0.09444363419092201,
            0.2838383575092178,
            0.6052556275115146,
        ],
    ],
    "logistic": [
        [
            0.2867773848459486,
            0.293735215539815,
            0.2911855521753143,
            0.10367632700534399,
            0.0246255204335781,
        ],
        [
            0.33692988943732904,
            0.3366326625861775,
            0.24136233668054574,
            0.07287068815171725,
            0.012204423144230356,
        ],
        [
            0.31895552736525656,
            0.30700119038802876,
            0.22012097097336017,
            0.10595737211380346,
            0.04796493915955104,
        ],
        [
            0.049415506100213794,
            0.052832326742543165,
            0.15477579382501186,
            0.39160256902488116,
            0.35137380430735,
        ],
        [
            0.007921692251251897,
            0.009798604743435491,
            0.09255534634576797,
            0.3258930437042541,
            0.5638313129552905,
        ],
    ],
}


@pytest.mark.parametrize("distribution", ["cauchy", "logistic"])
def test_odd_even_network_matches_diffsort(distribution):
    _, perm = DiffSort(5, "odd_even", steepness=3.0, distribution=distribution)(X5)
    expected = torch.tensor(PINNED_ODD_EVEN_P5_ROW0[distribution], dtype=torch.float64)
    assert torch.allclose(perm[0], expected, atol=1e-14)


def test_soft_permutation_matches_diffsort_n49_steepness_100():
    x = X49.clone().requires_grad_()
    values, perm = DiffSort(49, "bitonic", steepness=100.0)(x)
    for (r, i), row in PINNED_P49_ROW.items():
        assert torch.allclose(perm[r, i, :8], torch.tensor(row, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(values, (x[:, None] @ perm).squeeze(1), atol=1e-12)
    (perm * torch.cos(torch.arange(49.0 * 49)).double().reshape(49, 49)).sum().backward()
    expected = torch.tensor(PINNED_P49_GRAD, dtype=torch.float64)
    assert torch.allclose(x.grad[0, :6], expected, rtol=1e-9, atol=1e-11)
    assert x.grad.abs().sum().item() == pytest.approx(PINNED_P49_GRAD_ABS_SUM, rel=1e-10)


@pytest.mark.parametrize(
    ("network", "n"),
    [("bitonic", n) for n in (1, 2, 5, 9, 16, 49)] + [("odd_even", n) for n in (1, 2, 5, 16)],
)
def test_exact_sorting_as_steepness_grows(network, n, single_thread):
    """Cauchy comparators err by O(1/(s·gap)): steepness 1e12 sorts exactly, P is a hard
    permutation."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(10, n, generator=gen, dtype=torch.float64)
    values, perm = DiffSort(n, network, steepness=1e12)(x)
    exact, order = x.sort(dim=1)
    assert torch.allclose(values, exact, atol=1e-6)
    hard = torch.zeros_like(perm).scatter_(1, order[:, None, :], 1.0)  # input order[j] at rank j
    assert torch.allclose(perm, hard, atol=1e-6)
    errors = [
        (DiffSort(n, network, steepness=s)(x)[0] - exact).abs().max().item() for s in (1e2, 1e4)
    ]
    if n > 1:
        assert errors[1] < errors[0] / 10  # converges as s grows


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_soft_permutations_are_doubly_stochastic(distribution):
    x = _grid(8, 0.4, dim=9).double()
    values, perm = DiffSort(9, "bitonic", steepness=4.0, distribution=distribution)(x)
    ones = torch.ones(8, 9, dtype=torch.float64)
    assert torch.allclose(perm.sum(dim=1), ones, atol=1e-14)
    assert torch.allclose(perm.sum(dim=2), ones, atol=1e-14)
    assert torch.allclose(values, (x[:, None] @ perm).squeeze(1), atol=1e-14)
    if distribution in ("cauchy", "reciprocal"):  # monotonic relaxations (Petersen 2022)
        assert (values[:, 1:] >= values[:, :-1] - 1e-12).all()


def test_network_sizes():
    """n=49 is padded to 64 wires: 6 blocks, 21 layers (diffsort's); odd-even has n layers."""
    layers = bitonic_layers(49)
    assert len(layers) == 21 and len(bitonic_layers(64)) == 21 and len(bitonic_layers(5)) == 6
    assert all(len(layer) == 32 for layer in bitonic_layers(64))
    for layer in layers:  # disjoint comparators on real wires, each writes both of its wires
        wires = [w for c in layer for w in c[:2]]
        assert len(wires) == len(set(wires)) and max(wires) < 49
        assert all({c[2], c[3]} == {c[0], c[1]} for c in layer)
    assert len(odd_even_layers(49)) == 49 and DiffSort(49).num_layers == 21
    assert bitonic_layers(1) == []


def test_half_way_steepness_and_bad_input():
    x = torch.tensor([[2.0, 1.0]])
    _, perm = DiffSort(2, steepness=1.0)(x)
    alpha = math.atan(-1.0) / math.pi + 0.5  # weight of input 0 in the minimum
    assert torch.allclose(perm[0, 0], torch.tensor([alpha, 1 - alpha]))
    with pytest.raises(ValueError, match="expects"):
        DiffSort(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="network"):
        DiffSort(3, "merge")
    with pytest.raises(ValueError, match="distribution"):
        DiffSort(3, distribution="laplace")
    with pytest.raises(ValueError, match="steepness"):
        DiffSort(3, steepness=0.0)
