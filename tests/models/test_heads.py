"""Tests for densessl.models.heads: DINOHead, MLPProjection, Prototypes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densessl.models.heads import DINOHead, MLPProjection, Prototypes, build_mlp


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small_head(**kwargs: object) -> DINOHead:
    torch.manual_seed(0)
    defaults: dict[str, object] = {"hidden_dim": 32, "bottleneck_dim": 16}
    defaults.update(kwargs)
    return DINOHead(24, 40, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_bn", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 24), (3, 7, 24), (2, 3, 4, 24)])
def test_dino_head_shapes(use_bn: bool, num_layers: int, shape: tuple[int, ...]) -> None:
    head = _small_head(use_bn=use_bn, num_layers=num_layers)
    x = torch.randn(*shape, generator=_gen())
    out = head(x)
    assert out.shape == (*shape[:-1], 40)
    assert head.bottleneck(x).shape == (*shape[:-1], 16)


@torch.no_grad()
def test_dino_head_layout_matches_dino() -> None:
    head = DINOHead(384, 65536)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (384, 2048),
        (2048, 2048),
        (2048, 256),
    ]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.mlp)
    assert all(float(m.bias.abs().max()) == 0.0 for m in linears)
    # trunc-normal std 0.02, cut at ±2 (absolute): all weights tiny
    assert all(float(m.weight.abs().max()) <= 2.0 for m in linears)
    assert abs(float(linears[1].weight.std()) - 0.02) < 1e-3
    assert head.last_layer.weight.shape == (65536, 256)
    assert head.last_layer.bias is None


def test_bottleneck_is_unit_norm_and_feeds_last_layer() -> None:
    head = _small_head()
    x = torch.randn(4, 6, 24, generator=_gen()) * 10
    z = head.bottleneck(x)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4, 6))
    torch.testing.assert_close(head(x), head.last_layer(z))


def test_only_the_direction_of_the_bottleneck_matters() -> None:
    # With a single linear MLP (zero bias at init) the MLP is positively homogeneous, so
    # scaling the input by c > 0 scales the bottleneck by c; the normalisation removes it.
    head = _small_head(num_layers=1)
    x = torch.randn(8, 24, generator=_gen())
    torch.testing.assert_close(head(3.7 * x), head(x))
    torch.testing.assert_close(head(0.01 * x), head(x))


def test_norm_last_layer_freezes_magnitude_and_gives_cosines() -> None:
    head = _small_head(norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    v = head.last_layer.parametrizations.weight.original1
    assert g.shape == (40, 1) and v.shape == (40, 16)
    assert not g.requires_grad and v.requires_grad
    torch.testing.assert_close(g, torch.ones_like(g))
    x = torch.randn(64, 24, generator=_gen())
    out = head(x)
    assert float(out.detach().abs().max()) <= 1.0 + 1e-6
    cos = head.bottleneck(x) @ F.normalize(v, dim=1).T
    torch.testing.assert_close(out, cos)
    # rows of the effective weight are unit vectors
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(40))


def test_norm_last_layer_false_trains_magnitude() -> None:
    head = _small_head(norm_last_layer=False)
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad
    torch.testing.assert_close(g, torch.ones_like(g))
    head(torch.randn(4, 24, generator=_gen())).square().sum().backward()
    assert g.grad is not None and float(g.grad.abs().sum()) > 0


def test_last_layer_parameters_found_by_name_and_gradients_flow() -> None:
    head = _small_head()
    names = [n for n, p in head.named_parameters() if "last_layer" in n]
    assert names == [
        "last_layer.parametrizations.weight.original0",
        "last_layer.parametrizations.weight.original1",
    ]
    head(torch.randn(4, 24, generator=_gen())).square().sum().backward()
    params = dict(head.named_parameters())
    assert params["last_layer.parametrizations.weight.original0"].grad is None  # frozen
    assert params["last_layer.parametrizations.weight.original1"].grad is not None
    assert params["mlp.0.weight"].grad is not None


def test_deepcopy_gives_equal_but_independent_head() -> None:
    head = _small_head()
    teacher = copy.deepcopy(head)
    x = torch.randn(3, 5, 24, generator=_gen())
    torch.testing.assert_close(teacher(x), head(x), rtol=0, atol=0)
    assert not teacher.last_layer.parametrizations.weight.original0.requires_grad
    with torch.no_grad():
        teacher.last_layer.parametrizations.weight.original1.mul_(-1)
    torch.testing.assert_close(teacher(x), -head(x))


def test_state_dict_round_trip() -> None:
    a = _small_head()
    torch.manual_seed(1)
    b = DINOHead(24, 40, hidden_dim=32, bottleneck_dim=16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 24, generator=_gen())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")
def test_loads_legacy_weight_g_weight_v_keys() -> None:
    # Official DINO checkpoints store the head's last layer as torch.nn.utils.weight_norm
    # (``last_layer.weight_g`` / ``last_layer.weight_v``); the parametrisation converts them.
    head = _small_head(norm_last_layer=False)
    legacy = nn.utils.weight_norm(nn.Linear(16, 40, bias=False))
    with torch.no_grad():
        legacy.weight_g.uniform_(0.5, 2.0, generator=_gen(1))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("last_layer")}
    state["last_layer.weight_g"] = legacy.weight_g.detach().clone()
    state["last_layer.weight_v"] = legacy.weight_v.detach().clone()
    head.load_state_dict(state)
    z = F.normalize(torch.randn(6, 16, generator=_gen()), dim=-1)
    torch.testing.assert_close(head.last_layer(z), legacy(z))


def test_dino_head_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(8, 16, num_layers=0)
    with pytest.raises(ValueError, match="out_dim"):
        DINOHead(8, 0)
    with pytest.raises(ValueError, match="hidden_dim"):
        build_mlp(8, 4, 0, 2)


def test_mlp_projection_shapes_and_normalisation() -> None:
    torch.manual_seed(0)
    proj = MLPProjection(24, out_dim=16, hidden_dim=32)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in proj.modules())
    assert sum(isinstance(m, nn.Linear) for m in proj.modules()) == 3
    x = torch.randn(2, 9, 24, generator=_gen())
    z = proj(x)
    assert z.shape == (2, 9, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 9))
    raw = MLPProjection(24, out_dim=16, hidden_dim=32, normalize=False)
    raw.load_state_dict(proj.state_dict())
    torch.testing.assert_close(F.normalize(raw(x), dim=-1), z)
    assert proj(torch.randn(5, 24, generator=_gen())).shape == (5, 16)


def test_prototypes_normalize_and_cosine_scores() -> None:
    torch.manual_seed(0)
    protos = Prototypes(16, 30)
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(30))  # normalised at init
    weight = protos.weight
    with torch.no_grad():
        protos.weight.mul_(torch.rand(30, 1, generator=_gen()) * 5 + 0.1)
    assert protos.normalize_() is protos
    assert protos.weight is weight  # same Parameter: optimiser state stays attached
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(30))
    x = F.normalize(torch.randn(4, 7, 16, generator=_gen()), dim=-1)
    scores = protos(x)
    assert scores.shape == (4, 7, 30)
    assert float(scores.detach().abs().max()) <= 1.0 + 1e-6
    torch.testing.assert_close(scores, torch.einsum("bnd,kd->bnk", x, protos.weight))
    assert protos.weight.requires_grad  # normalize_ does not detach the parameter
    with pytest.raises(ValueError):
        Prototypes(0, 3)


def test_prototypes_gradients_flow_after_normalize() -> None:
    protos = Prototypes(8, 5)
    protos.normalize_()
    protos(torch.randn(3, 8, generator=_gen())).sum().backward()
    assert protos.weight.grad is not None
    assert copy.deepcopy(protos).weight is not protos.weight
