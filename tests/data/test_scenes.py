"""Synthetic scenes: determinism, exact labels, colour-free classes, the folder layout."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.scenes import render as scene_render
from densessl.data.scenes.dataset import (
    IGNORE_INDEX,
    SceneConfig,
    SyntheticScenes,
    class_names,
    format_statistics,
    render_scene,
    scene_statistics,
    write_scenes,
)
from densessl.data.scenes.shapes import SHAPES

CFG = SceneConfig()
S, T = CFG.num_stuff_classes, CFG.num_thing_classes


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """200 default scenes (96 px) of seed 0."""
    return [render_scene(i, 0, CFG) for i in range(200)]


def test_same_seed_same_bytes_and_order_does_not_matter():
    a = [render_scene(i, 7, CFG) for i in (3, 4, 5)]
    b = [render_scene(i, 7, CFG) for i in (5, 3, 4)]
    for (img, lab), (img2, lab2) in zip(a, [b[1], b[2], b[0]], strict=True):
        assert img.tobytes() == img2.tobytes() and lab.tobytes() == lab2.tobytes()
    img, lab = a[0]
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3)
    assert lab.dtype == np.uint8 and lab.shape == (96, 96)


def test_different_seed_or_index_differs():
    img, lab = render_scene(3, 7, CFG)
    other_seed = render_scene(3, 8, CFG)
    other_index = render_scene(4, 7, CFG)
    for img2, lab2 in (other_seed, other_index):
        assert not np.array_equal(img, img2) and not np.array_equal(lab, lab2)


def test_every_class_appears_in_200_images(scenes):
    present = set()
    for _, lab in scenes:
        present |= set(np.unique(lab).tolist())
    assert present - {IGNORE_INDEX} == set(range(S + T))


def test_labels_valid_and_ignore_fraction_small_but_nonzero(scenes):
    labels = np.stack([lab for _, lab in scenes])
    valid = (labels < S + T) | (labels == IGNORE_INDEX)
    assert valid.all()
    ignore = (labels == IGNORE_INDEX).mean()
    assert 0.005 < ignore < 0.10, ignore
    # Things are neither negligible nor the whole picture.
    things = ((labels >= S) & (labels < S + T)).mean()
    assert 0.08 < things < 0.6, things


def test_ignore_band_separates_classes(scenes):
    """Exact labels: two 4-adjacent pixels never carry two different valid classes."""
    clashes, pairs = 0, 0
    for _, lab in scenes:
        for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
            ok = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            clashes += int((ok & (a != b)).sum())
            pairs += a.size
    assert clashes <= 1e-4 * pairs, clashes
    # ...and the band is thin: almost every 255 pixel touches a valid one.
    lab = scenes[0][1]
    ignore = lab == IGNORE_INDEX
    touch = np.zeros_like(ignore)
    valid = ~ignore
    touch[1:] |= valid[:-1]
    touch[:-1] |= valid[1:]
    touch[:, 1:] |= valid[:, :-1]
    touch[:, :-1] |= valid[:, 1:]
    assert (touch[ignore]).mean() > 0.95


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_sdf_is_a_distance_near_the_outline(name):
    """|grad sd| = 1 near the outline (else the 255 band would be too thin or too wide)."""
    step = 0.05
    axis = np.arange(-30, 30, step, dtype=np.float32)
    sd = SHAPES[name](axis[None, :], axis[:, None], 20.0)
    gy, gx = np.gradient(sd, step)
    near = np.abs(sd) < 1.0
    grad = np.hypot(gx, gy)[near]
    assert near.sum() > 1000 and (sd < 0).sum() > 0.2 * (20 / step) ** 2
    assert np.median(grad) == pytest.approx(1.0, abs=0.02)
    assert np.quantile(grad, 0.995) < 1.05  # never overestimates the distance
    assert np.abs(sd[0]).min() > 1.0 and np.abs(sd[:, 0]).min() > 1.0  # fits in radius r


def _balanced_accuracy(pred: np.ndarray, true: np.ndarray, k: int) -> float:
    return float(np.mean([(pred[true == c] == c).mean() for c in range(k)]))


@pytest.mark.parametrize("colours", scene_render.COLOUR_MODES)
def test_colour_does_not_predict_the_thing_class(scenes, colours):
    """Nearest-class-mean and colour-histogram classifiers over thing pixels are near chance,
    whichever way colours are drawn."""
    if colours != CFG.colours:
        scenes = [render_scene(i, 0, SceneConfig(colours=colours)) for i in range(200)]

    def thing_pixels(items):
        img = np.concatenate([i.reshape(-1, 3) for i, _ in items]).astype(np.float64)
        lab = np.concatenate([lab.ravel() for _, lab in items]).astype(np.int64)
        keep = (lab >= S) & (lab < S + T)
        return img[keep], lab[keep] - S

    x_fit, y_fit = thing_pixels(scenes[:120])
    x_test, y_test = thing_pixels(scenes[120:])

    def nearest_mean(x_fit, y_fit, x):
        means = np.stack([x_fit[y_fit == c].mean(0) for c in range(T)])
        return np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), 1)

    def histogram(x_fit, y_fit, x, bins=4):
        cell = lambda z: (np.clip(z, 0, 255) * bins // 256).astype(int) @ [bins * bins, bins, 1]  # noqa: E731
        counts = np.ones((T, bins**3))
        np.add.at(counts, (y_fit, cell(x_fit)), 1)
        prob = counts / counts.sum(1, keepdims=True)
        return np.argmax(prob[:, cell(x)], 0)

    chance = 1.0 / T
    for classify in (nearest_mean, histogram):
        acc = _balanced_accuracy(classify(x_fit, y_fit, x_test), y_test, T)
        assert acc < 1.6 * chance, (classify.__name__, acc)
        if colours != "instance":
            continue
        # Control: a class bias of +-30 (of 255) in the colours would already fail the test.
        shift = np.random.default_rng(0).uniform(-30, 30, (T, 3))
        acc = _balanced_accuracy(
            classify(x_fit + shift[y_fit], y_fit, x_test + shift[y_test]), y_test, T
        )
        assert acc > 1.6 * chance, (classify.__name__, acc)


def test_palette_and_gray_colours():
    bare = {"noise": 0.0, "blur": 0.0}
    gray = [render_scene(i, 0, SceneConfig(colours="gray", **bare))[0] for i in range(5)]
    noisy = render_scene(0, 0, SceneConfig(colours="gray", noise=20.0))[0].astype(int)
    for img in [*gray, noisy]:
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert np.std(noisy - render_scene(0, 0, SceneConfig(colours="gray", noise=0.0))[0]) > 2
    palette = np.asarray(scene_render.PALETTE, np.float64)

    def off_palette(config: SceneConfig) -> np.ndarray:
        """Each pixel's distance to the nearest mix of two palette colours."""
        x = np.concatenate([render_scene(i, 0, config)[0].reshape(-1, 3) for i in range(5)])
        best = np.full(len(x), np.inf)
        for a, b in itertools.combinations(palette, 2):
            t = np.clip((x - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
            best = np.minimum(best, np.linalg.norm(x - a - t[:, None] * (b - a), axis=1))
        return best

    # Textures blend an object's two colours; only anti-aliased outlines mix more.
    assert np.mean(off_palette(SceneConfig(colours="palette", **bare)) < 2) > 0.9
    assert np.mean(off_palette(SceneConfig(**bare)) < 2) < 0.05
    # Geometry and labels do not depend on the colours.
    for i in range(3):
        labels = {m: render_scene(i, 0, SceneConfig(colours=m))[1].tobytes()
                  for m in scene_render.COLOUR_MODES}  # fmt: skip
        assert len(set(labels.values())) == 1
    with pytest.raises(ValueError, match=r"SceneConfig\.colours.*'rainbow'"):
        SceneConfig(colours="rainbow")


def test_sizes_and_resolution_independence():
    img, lab = render_scene(11, 0, SceneConfig(size=200))
    assert img.shape == (200, 200, 3) and lab.shape == (200, 200)
    small = render_scene(11, 0, SceneConfig(size=64))[1]
    large = render_scene(11, 0, SceneConfig(size=192))[1][1::3, 1::3]  # same pixel centres
    both = (small != IGNORE_INDEX) & (large != IGNORE_INDEX)
    assert both.mean() > 0.85 and (small[both] == large[both]).mean() > 0.99


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 63),
        ("size", 513),
        ("size", 96.0),
        ("num_thing_classes", 0),
        ("num_thing_classes", 13),
        ("num_stuff_classes", 5),
        ("min_objects", -1),
        ("noise", -1.0),
        ("blur", 4.0),
        ("max_radius", 0.5),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SceneConfig\.{field}\b"):
        SceneConfig(**{field: value})


def test_config_max_objects_below_min_objects():
    with pytest.raises(ValueError, match="max_objects"):
        SceneConfig(min_objects=4, max_objects=3)


def test_fewer_classes_and_no_objects():
    cfg = SceneConfig(num_thing_classes=3, num_stuff_classes=1, min_objects=0, max_objects=0)
    assert class_names(cfg) == [
        "stuff/gradient",
        "thing/disc-stripes",
        "thing/disc-checker",
        "thing/square-dots",
    ]
    labels = np.stack([render_scene(i, 0, cfg)[1] for i in range(10)])
    assert set(np.unique(labels).tolist()) == {0}  # one region, no objects: no boundary


def test_distinct_cue_class_set_shares_no_shape_or_texture():
    cfg = SceneConfig(class_set="distinct-cues")
    assert cfg.num_thing_classes == 6  # the default 8 is capped at the set's size
    things = cfg.thing_classes
    assert len({shape for shape, _ in things}) == len({tex for _, tex in things}) == 6
    assert class_names(cfg)[S:] == [f"thing/{a}-{b}" for a, b in things]
    labels = np.stack([render_scene(i, 0, cfg)[1] for i in range(60)])
    assert set(np.unique(labels).tolist()) - {IGNORE_INDEX} == set(range(S + 6))
    # The class set only changes the objects: stuff-only scenes are the same pictures.
    bare = {"min_objects": 0, "max_objects": 0}
    for i in range(3):
        a = render_scene(i, 0, SceneConfig(class_set="distinct-cues", **bare))
        b = render_scene(i, 0, SceneConfig(**bare))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    two = SceneConfig(class_set="distinct-cues", num_thing_classes=2)
    assert class_names(two)[S:] == ["thing/disc-stripes", "thing/square-dots"]
    with pytest.raises(ValueError, match=r"SceneConfig\.class_set.*'distinct-cues'"):
        SceneConfig(class_set="easy")
    data = SyntheticScenes(num_images=4, size=64, class_set="distinct-cues")
    assert data.num_classes == S + 6 and data.config.class_set == "distinct-cues"
    img, lab = render_scene(1, 0, SceneConfig(size=64, class_set="distinct-cues"))
    assert np.array_equal(data[1]["label"].numpy(), lab)
    assert np.array_equal(data[1]["image"].permute(1, 2, 0).numpy(), img)


def test_dataset_splits_items_and_errors():
    train = SyntheticScenes(num_images=10, size=64, seed=3, split="train")
    val = SyntheticScenes(num_images=10, size=64, seed=3, split="val")
    assert len(train) == 8 and len(val) == 2 and len(train) + len(val) == 10
    assert set(train.indices).isdisjoint(val.indices)
    assert train.num_classes == len(train.class_names) == S + T and train.ignore_index == 255
    item = val[1]
    assert item["index"] == 9
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["label"].dtype == torch.uint8 and item["label"].shape == (64, 64)
    img, lab = render_scene(9, 3, SceneConfig(size=64))
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), img)
    assert np.array_equal(item["label"].numpy(), lab)
    with pytest.raises(IndexError):
        val[2]
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(num_images=10, split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        SyntheticScenes(num_images=10, val_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes(num_images=10, size=32)


def test_dataloader_workers_render_the_same_scenes():
    """Scene i does not depend on the process (or the order) that renders it."""
    data = SyntheticScenes(num_images=12, size=64, seed=2, split="val", val_fraction=0.5)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6, 12))
    for k, index in enumerate(range(6, 12)):
        img, _ = render_scene(index, 2, SceneConfig(size=64))
        assert np.array_equal(images[k].permute(1, 2, 0).numpy(), img)


def test_write_scenes_layout_and_roundtrip(tmp_path: Path):
    cfg = SceneConfig(size=64, noise=3.0)
    out = write_scenes(tmp_path / "s", 6, 64, seed=5, val_fraction=0.34, config=cfg, progress=False)
    stems = [f"{i:06d}" for i in range(6)]
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "images", "labels", "splits"]
    for sub in ("images", "labels"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{s}.png" for s in stems]
    train = (out / "splits/train.txt").read_text().split()
    val = (out / "splits/val.txt").read_text().split()
    assert train == stems[:4] and val == stems[4:]
    for i, stem in enumerate(stems):
        img, lab = render_scene(i, 5, cfg)
        with Image.open(out / "images" / f"{stem}.png") as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), img)
        with Image.open(out / "labels" / f"{stem}.png") as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), lab)
    meta = json.loads((out / "classes.json").read_text())
    assert meta["class_names"] == class_names(cfg) and meta["ignore_index"] == 255
    assert meta["stuff"] == list(range(S)) and meta["things"] == list(range(S, S + T))
    assert (meta["seed"], meta["size"], meta["num_images"]) == (5, 64, 6)
    assert meta["config"]["noise"] == 3.0 and isinstance(meta["version"], int)

    stats = scene_statistics(out)
    direct = scene_statistics(SyntheticScenes(6, seed=5, split="all", config=cfg))
    assert stats["classes"] == direct["classes"] and stats["splits"] == {"train": 4, "val": 2}
    total = sum(c["pixel_fraction"] for c in stats["classes"]) + stats["ignore_fraction"]
    assert total == pytest.approx(1.0)
    table = format_statistics(stats)
    assert "thing/disc-stripes" in table and "ignore" in table and "6 images" in table

    write_scenes(out, 3, 64, seed=5, config=cfg, progress=False)  # rewrite, smaller
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{s}.png" for s in stems[:3]]


def test_write_scenes_refuses_files_and_foreign_folders(tmp_path: Path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="existing file"):
        write_scenes(target, 2, 64, 0, progress=False)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a scenes folder"):
        write_scenes(foreign, 2, 64, 0, progress=False)


def test_interrupted_write_is_not_complete(tmp_path: Path, monkeypatch):
    out = write_scenes(tmp_path / "s", 3, 64, 0, progress=False)
    calls = []

    def failing(index, seed, config):
        calls.append(index)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return scene_render.render_scene(index, seed, config)

    monkeypatch.setattr("densessl.data.scenes.dataset.render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        write_scenes(out, 5, 64, 0, progress=False)
    assert not (out / "classes.json").exists()
    with pytest.raises(FileNotFoundError, match=r"classes\.json"):
        scene_statistics(out)


def test_fast_enough():
    """A loose guard against per-pixel Python (~2 img/s; the speed target, >= 200 img/s, is
    benchmarks/scenes_throughput.py). CPU time of this process, so a loaded machine does not
    fail it."""
    cfg = SceneConfig()
    render_scene(0, 0, cfg)
    start = time.process_time()
    for i in range(60):
        render_scene(i, 1, cfg)
    assert 60 / max(time.process_time() - start, 1e-9) > 20


def test_cli_writes_the_distinct_cue_set(tmp_path: Path, capsys):
    from densessl.cli import main

    out = tmp_path / "d"
    args = ["scenes", "--out", str(out), "--num-images", "4", "--size", "64"]
    assert main([*args, "--class-set", "distinct-cues"]) == 0
    meta = json.loads((out / "classes.json").read_text())
    assert meta["class_set"] == meta["config"]["class_set"] == "distinct-cues"
    assert meta["num_classes"] == S + 6 and "thing/ring-concentric" in meta["class_names"]
    assert "wrote 4 scenes" in capsys.readouterr().out
    assert main([*args, "--class-set", "easy"]) == 2
    assert "--class-set" in capsys.readouterr().err


def test_cli_writes_gray_scenes(tmp_path: Path, capsys):
    from densessl.cli import main

    out = tmp_path / "g"
    args = ["scenes", "--out", str(out), "--num-images", "4", "--size", "64"]
    assert main([*args, "--colours", "gray"]) == 0
    meta = json.loads((out / "classes.json").read_text())
    assert meta["colours"] == meta["config"]["colours"] == "gray"
    image = np.asarray(Image.open(next((out / "images").glob("*.png"))))
    assert (image[..., 0] == image[..., 2]).all()
    assert main([*args[:2], str(tmp_path / "h"), *args[3:], "--colours", "sepia"]) == 2
    assert "--colours" in capsys.readouterr().err and not (tmp_path / "h").exists()
