"""LOCA releases: Flax msgpack checkpoints (google-research/scenic projects/loca), read
without JAX; module names and kernel layouts converted to timm's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densessl.io.checkpoint import CheckpointError
from densessl.models.formats import loca_flax
from densessl.models.formats.detect import detect_format, read_checkpoint
from densessl.models.formats.msgpack_reader import unpack
from densessl.models.loading import load_backbone
from helpers import loca_tree, msgpack_bytes, write_loca

#: scenic @4a38d475ee89 ``scenic/projects/loca/vit.py`` ``ViT4LOCA(hidden_size=32, num_heads=2,
#: num_layers=1, mlp_dim=128, patches={"size": (16, 16)}, posembs=(2, 2), ...)`` with the
#: teacher tree of ``write_loca(path, "zoo")`` (read back by ``flax.serialization.
#: msgpack_restore``), ``apply(..., train=False)[2]`` (the encoder's patch tokens after
#: ``encoder_norm``) on ``randn(2, 3, 48, 64)`` (seed 1, as NHWC): jax 0.10.2 / flax 0.12.8 on
#: CPU; densessl agrees to 1.4e-6 (positions resampled 2x2 -> 3x4 bilinearly).
OFFICIAL_FIRST = [
    [-0.4252352714538574, 0.01027921587228775, 2.0776584148406982, 1.0313094854354858],
    [-0.9175816774368286, 0.16827237606048584, 1.726586103439331, -0.39305081963539124],
    [-0.08899074792861938, 0.39311325550079346, -0.9225984811782837, -1.0742316246032715],
]
OFFICIAL_LAST = [1.755589485168457, 1.2087504863739014, -0.26170068979263306, 1.7924062013626099]
OFFICIAL_ABS_SUM = 605.769775390625


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))


def test_features_equal_scenic_loca_vit(tmp_path):
    path = tmp_path / "loca_vsmall_imnet1k"
    write_loca(path, "zoo")
    backbone = load_backbone(path)  # architecture read off the tree: heads from the kernel
    config = backbone.config
    assert (config.embed_dim, config.num_heads, config.depth, config.img_size) == (32, 2, 1, 32)
    assert (config.act_layer, config.pos_interp, config.cls_token) == (
        "gelu_tanh",
        "bilinear",
        False,
    )
    with torch.no_grad():
        f = backbone.tokens(_input())[1].flatten(1, 2)
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(OFFICIAL_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(OFFICIAL_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - OFFICIAL_ABS_SUM) < 1e-3


def _flax_reference(tree: dict, x: torch.Tensor) -> torch.Tensor:
    """Flax semantics written out on the Flax-layout arrays (NHWC conv, einsum attention,
    tanh GELU, LayerNorm eps 1e-6), at the position grid's own size."""
    t = tree["ToTokenSequence_0"]
    y = F.conv2d(x, t["embedding"]["kernel"].permute(3, 2, 0, 1), t["embedding"]["bias"], stride=16)
    y = y.permute(0, 2, 3, 1) + t["posembed_input"]
    y = y.reshape(y.shape[0], -1, y.shape[-1])

    def norm(v, p):
        return F.layer_norm(v, v.shape[-1:], p["scale"], p["bias"], eps=1e-6)

    b = tree["encoderblock_0"]
    a = b["MultiHeadDotProductAttention_0"]
    h = norm(y, b["LayerNorm_0"])
    q, k, v = (
        torch.einsum("bnd,dhk->bnhk", h, a[n]["kernel"]) + a[n]["bias"]
        for n in ("query", "key", "value")
    )
    w = torch.einsum("bqhk,bshk->bhqs", q / q.shape[-1] ** 0.5, k).softmax(-1)
    y = (
        y
        + torch.einsum("bhqs,bshk->bqhk", w, v).flatten(2) @ a["out"]["kernel"].flatten(0, 1)
        + a["out"]["bias"]
    )
    m = b["MlpBlock_0"]
    h = F.gelu(
        norm(y, b["LayerNorm_1"]) @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"],
        approximate="tanh",
    )
    y = y + h @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
    return norm(y, tree["encoder_norm"])


@pytest.mark.parametrize(
    ("layout", "which"), [("zoo", "teacher"), ("trainer", "teacher"), ("trainer", "student")]
)
def test_layouts_and_networks(tmp_path, layout, which):
    path = tmp_path / "checkpoint_3"
    teacher = write_loca(path, layout, d=64, heads=4, depth=1)
    state = read_checkpoint(path)
    assert detect_format(state) == "loca" and loca_flax.is_flax_file(path)
    expected_tree = teacher if which == "teacher" else state["params"]
    backbone = load_backbone(path, which=which)
    assert backbone.num_heads == 4 and backbone.config.arch == "vit_base"  # 64-d: not standard
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = backbone.tokens(x)[1].flatten(1, 2)
    torch.testing.assert_close(ours, _flax_reference(expected_tree, x), atol=2e-5, rtol=0)
    if layout == "zoo":
        with pytest.raises(CheckpointError, match=r"no student weights.*--which teacher"):
            load_backbone(path, which="student")


def test_partial_tree_names_what_is_missing(tmp_path):
    tree = loca_tree()
    del tree["encoderblock_0"]["MlpBlock_0"]["Dense_1"]
    path = tmp_path / "partial"
    path.write_bytes(msgpack_bytes({"teacher_weights": tree}))
    with pytest.raises(
        CheckpointError,
        match=r"partial: looks like a LOCA Flax checkpoint but encoderblock_0/kernel",
    ):
        load_backbone(path)
    path.write_bytes(msgpack_bytes({"teacher_weights": tree})[:-7])  # cut short
    with pytest.raises(CheckpointError, match=r"not a readable LOCA Flax checkpoint.*cut short"):
        load_backbone(path)


def test_msgpack_reader_types():
    value = {
        "a": [1, -3, 300, -70000, 2**40, 1.5, None, True, False],
        "b": "x" * 40,
        "c": b"\x00\x01",
    }
    assert unpack(msgpack_bytes(value), lambda code, data: None) == value
    with pytest.raises(ValueError, match="after the msgpack value"):
        unpack(msgpack_bytes(1) + b"\x01", lambda code, data: None)


def test_given_architecture_takes_the_format_structure(tmp_path):
    from densessl.evaluation.features import build_extractor
    from densessl.models.vit import BackboneConfig

    path = tmp_path / "loca_vsmall_imnet1k"
    write_loca(path, "zoo")
    # what --arch builds (DINO's resampling, the import default), here at the test's size
    given = BackboneConfig(
        arch="vit_tiny", img_size=32, depth=1, embed_dim=32, num_heads=2, pos_interp="dino"
    )
    config = load_backbone(path, given).config
    assert (config.cls_token, config.act_layer, config.pos_interp) == (
        False,
        "gelu_tanh",
        "bilinear",
    )
    assert build_extractor(path).source["kind"] == "loca"


@pytest.mark.parametrize(("width", "heads"), [(384, 6), (768, 12), (1024, 16), (1280, 16)])
def test_zoo_widths_give_the_vit_s_b_l_h_configs(width, heads):
    """README zoo: ViT-S/B/L/H/16 (scenic's configs: 384/6, 768/12, 1024/16, 1280/16 heads);
    one block each here, the depth is counted from ``encoderblock_{i}``."""
    from densessl.models.vit import BackboneConfig, timm_spec_for

    converted = loca_flax.to_timm({"teacher_weights": loca_tree(d=width, heads=heads, depth=1)})
    config = BackboneConfig(**converted.fields)
    assert (config.resolved_embed_dim, config.resolved_num_heads, config.patch_size) == (
        width,
        heads,
        16,
    )
    kwargs = timm_spec_for(config)["kwargs"]
    assert kwargs["class_token"] is False and kwargs["act_layer"] == "gelu_tanh"
    assert converted.weights["blocks.0.mlp.fc1.weight"].shape == (4 * width, width)


def test_other_module_names_are_listed(tmp_path):
    """A zoo file from a code variant with other names: the message shows what is there."""
    tree = loca_tree()
    tree["Transformer"] = {"layer_0": tree.pop("encoderblock_0")}
    path = tmp_path / "variant"
    path.write_bytes(msgpack_bytes({"teacher_weights": tree}))
    with pytest.raises(CheckpointError, match=r"no 'encoderblock_0'.*Transformer/layer_0"):
        load_backbone(path)
