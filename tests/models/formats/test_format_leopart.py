"""Leopart releases: Lightning ``.ckpt`` with ``model.`` (student) and ``teacher.`` networks
(MkuuWaUjinga/leopart), read with ``weights_only=True`` and an allow-list of Lightning names."""

from __future__ import annotations

import pytest
import torch

from densessl.io.checkpoint import CheckpointError
from densessl.models.formats import leopart
from densessl.models.formats.detect import convert, detect_format, read_checkpoint
from densessl.models.loading import load_backbone
from densessl.models.vit import BackboneConfig
from helpers import write_leopart

#: The official model on the same seeded weights and input as the SelfPatch test:
#: MkuuWaUjinga/leopart @7835701338d4, ``src/vit.py`` ``VisionTransformer(img_size=[32],
#: patch_size=16, embed_dim=32, depth=2, num_heads=2, qkv_bias=True, norm_layer=LayerNorm(
#: eps=1e-6), output_dim=16, hidden_dim=16, nmb_prototypes=10).forward_backbone(x)[:, 1:]``
#: (what its evaluations read), on CPU; densessl agrees to 1.5e-8.
OFFICIAL_FIRST = [
    [-0.011923184618353844, -0.005841212812811136, -0.09873171895742416, -0.004991448950022459],
    [-0.011848753318190575, -0.1565747857093811, -0.09921220690011978, -0.06212293729186058],
    [-0.01191349234431982, 0.054505739361047745, -0.11122177541255951, -0.04704766348004341],
]
OFFICIAL_LAST = [
    -0.047408442944288254,
    -0.13092316687107086,
    -0.21119089424610138,
    0.003987039905041456,
]
OFFICIAL_ABS_SUM = 44.1384162902832
#: The tiny ViT of the parity values, with DINO's position resampling (as the official code).
SMALL = BackboneConfig(
    arch="vit_tiny",
    patch_size=16,
    img_size=32,
    depth=2,
    embed_dim=32,
    num_heads=2,
    pos_interp="dino",
)


def test_features_equal_the_official_leopart_vit(tmp_path):
    path = tmp_path / "leopart_vits16.ckpt"
    write_leopart(path, d=32, depth=2)
    backbone = load_backbone(path, SMALL)
    assert backbone.has_cls_token and backbone.config.pos_interp == "dino"
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = backbone.tokens(x)[1].flatten(1, 2)
    torch.testing.assert_close(f[0, :3, :4], torch.tensor(OFFICIAL_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1, -1, -4:], torch.tensor(OFFICIAL_LAST), atol=1e-5, rtol=0)
    assert abs(float(f.abs().sum()) - OFFICIAL_ABS_SUM) < 1e-4


@pytest.mark.parametrize("lightning", [True, False])
def test_teacher_by_default_student_on_request(tmp_path, lightning):
    path = tmp_path / "leopart.ckpt"
    teacher = write_leopart(path, lightning=lightning)
    state = read_checkpoint(path)  # Lightning names bound to inert stand-ins
    assert detect_format(state) == "leopart"
    converted = convert(state, path)
    assert set(converted.weights) == set(teacher)  # projection head and prototypes dropped
    assert all(torch.equal(converted.weights[k], v) for k, v in teacher.items())
    assert {"teacher.prototypes.weight", "teacher.projection_head.0.weight"} <= set(
        converted.extras
    )
    student = load_backbone(path, which="student")
    raw = state["state_dict"] if lightning else state
    assert torch.equal(student.model.pos_embed, raw["model.pos_embed"])
    if lightning:
        keys = list(state["callbacks"])
        assert [type(k) for k in keys] == [type] and keys[0] is leopart.LightningCallbackKey
        assert dict(state["hyper_parameters"]) == {"arch": "vit-small", "patch_size": 16}


def test_no_teacher_network_says_use_student(tmp_path):
    path = tmp_path / "no_teacher.ckpt"
    write_leopart(path, lightning=False)
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if k.startswith("model.")}
    torch.save({"state_dict": state, "epoch": 1}, path)
    with pytest.raises(
        CheckpointError, match=r"no_teacher\.ckpt: .*Leopart.*no teacher.*--which student"
    ):
        load_backbone(path)
    assert load_backbone(path, which="student").has_cls_token


class Payload:
    """A pickled object that would run code when unpickled."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_other_pickled_classes_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    write_leopart(path, lightning=False)
    state = torch.load(path, weights_only=True)
    torch.save(
        {"state_dict": state, "callbacks": {"x": Payload()}},
        path,
    )
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        load_backbone(path)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize(("width", "patch", "arch"), [(384, 16, "vit_small"), (768, 8, "vit_base")])
def test_released_architectures_are_inferred(tmp_path, width, patch, arch):
    """README: ViT-S/16 (``leopart_vits16.ckpt``) and ViT-B/8 (``leopart_vitb8.ckpt``); one
    block here, the depth is read off the weights."""
    path = tmp_path / f"leopart_{arch}.ckpt"
    write_leopart(path, d=width, depth=1, p=patch, img=32)
    backbone = load_backbone(path)
    config = backbone.config
    assert (config.arch, config.patch_size, config.resolved_depth) == (arch, patch, 1)
    assert backbone.tokens(torch.zeros(1, 3, 32, 48))[1].shape == (
        1,
        32 // patch,
        48 // patch,
        width,
    )
