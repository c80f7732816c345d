"""ImageFolderDataset over a folder holding every odd kind of file: what happens to each."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from densessl.data.folder import (
    CorruptImageWarning,
    ImageFolderDataset,
    UnreadableDirectoryWarning,
    list_image_files,
    upscale_to_min_size,
)
from densessl.io.decode import ImageDecodeError

GOOD = [
    "a_rgb.jpg",
    "b_gray.png",
    "c_palette_trns.png",
    "d_rgba.png",
    "e_gray16.png",
    "f_exif6.jpg",
    "g_cmyk.jpg",
    "h_anim.gif.png",  # a GIF under a .png name: content decides
    "i_lossless.webp",
    "j_plain.BMP",
    "k_plain.tiff",
    "l_one_pixel.png",
    "sub/deeper/m_nested.jpeg",
]
HEADER_BAD = {"z0_zero.jpg": "empty file", "z1_text.png": "not a recognised image"}
BOMB = "z2_bomb.png"
TRUNCATED = "z3_truncated.jpg"


def _bomb_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    data = buf.getvalue()
    ihdr = struct.pack(">II", 100_000, 100_000) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


def _make_odd_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "a_rgb.jpg")
    Image.new("L", (8, 8), 90).save(root / "b_gray.png")
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((3, 3), 1)
    pal.save(root / "c_palette_trns.png", transparency=0)
    Image.new("RGBA", (5, 7), (0, 0, 255, 0)).save(root / "d_rgba.png")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(root / "e_gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 12), (0, 0, 255)).save(root / "f_exif6.jpg", exif=exif.tobytes())
    Image.new("CMYK", (9, 9), (0, 255, 255, 0)).save(root / "g_cmyk.jpg")
    frames = [Image.new("RGB", (5, 5), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "h_anim.gif.png", format="GIF", save_all=True, append_images=frames[1:])
    Image.new("RGB", (6, 4), (1, 2, 3)).save(root / "i_lossless.webp", lossless=True)
    Image.new("RGB", (6, 4), (4, 5, 6)).save(root / "j_plain.BMP", format="BMP")
    Image.new("RGB", (6, 4), (7, 8, 9)).save(root / "k_plain.tiff")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(root / "l_one_pixel.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "sub" / "deeper" / "m_nested.jpeg")
    (root / "z0_zero.jpg").write_bytes(b"")
    (root / "z1_text.png").write_text("not an image")
    (root / BOMB).write_bytes(_bomb_bytes())
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise.save(root / "full.tmp", format="JPEG", quality=90)
    data = (root / "full.tmp").read_bytes()
    (root / TRUNCATED).write_bytes(data[: len(data) // 2])
    (root / "full.tmp").unlink()
    (root / "readme.txt").write_text("ignored: not an image extension")
    os.symlink(".", root / "sub" / "loop_to_self")  # symlink loops must terminate
    os.symlink("..", root / "sub" / "deeper" / "loop_up")
    return root


@pytest.fixture
def odd(tmp_path: Path) -> Path:
    return _make_odd_folder(tmp_path / "odd")


def _build(root: Path, **kw) -> ImageFolderDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        return ImageFolderDataset(root, **kw)


def _rel(ds: ImageFolderDataset) -> list[str]:
    return [os.path.relpath(f, ds.root) for f in ds.files]


def test_listing_sorted_recursive_loops_cut(odd: Path) -> None:
    ds = _build(odd)
    # Header-bad files are dropped; the truncated JPEG passes the header scan (lazy).
    assert _rel(ds) == sorted([*GOOD, TRUNCATED], key=os.fsencode)
    assert len(ds) == len(GOOD) + 1
    assert _rel(_build(odd)) == _rel(ds)  # deterministic
    flat = _build(odd, recursive=False)
    assert "sub/deeper/m_nested.jpeg" not in _rel(flat) and len(flat) == len(ds) - 1


def test_construction_warning_counts_and_names(odd: Path) -> None:
    with pytest.warns(CorruptImageWarning) as rec:
        ds = ImageFolderDataset(odd)
    corrupt = [w for w in rec if issubclass(w.category, CorruptImageWarning)]
    assert len(corrupt) == 1
    msg = str(corrupt[0].message)
    assert f"skipped 3 of {len(GOOD) + 4} image files" in msg
    for name in [*HEADER_BAD, BOMB]:
        assert name in msg
    assert sorted(os.path.basename(s.path) for s in ds.skipped) == sorted([*HEADER_BAD, BOMB])
    reasons = {os.path.basename(s.path): s.reason for s in ds.skipped}
    for name, reason in HEADER_BAD.items():
        assert reasons[name].startswith(reason)
    assert "10,000,000,000 pixels" in reasons[BOMB]


def test_warning_names_at_most_five(tmp_path: Path) -> None:
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    for i in range(7):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"")
    with pytest.warns(CorruptImageWarning, match=r"skipped 7 of 8 .*; and 2 more") as rec:
        ImageFolderDataset(tmp_path)
    msg = str(rec[0].message)
    assert all(f"bad{i}.jpg" in msg for i in range(5)) and "bad5.jpg" not in msg


def test_each_good_kind_decodes_to_expected_values(odd: Path) -> None:
    ds = _build(odd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)  # the truncated file
        samples = [ds[i] for i in range(len(ds))]
    by_name = {os.path.relpath(s["path"], odd): s for s in samples}
    px = {k: tuple(int(v) for v in s["image"][:, 0, 0]) for k, s in by_name.items()}
    shape = {k: tuple(s["image"].shape) for k, s in by_name.items()}
    assert np.allclose(px["a_rgb.jpg"], (255, 0, 0), atol=6)
    assert px["b_gray.png"] == (90, 90, 90)
    assert px["c_palette_trns.png"] == (128, 128, 128)  # transparent → grey
    assert tuple(int(v) for v in by_name["c_palette_trns.png"]["image"][:, 3, 3]) == (0, 255, 0)
    assert px["d_rgba.png"] == (128, 128, 128)  # fully transparent blue → grey
    assert px["e_gray16.png"] == (255, 255, 255)
    assert shape["f_exif6.jpg"] == (3, 30, 12)  # H/W swapped by the EXIF rotation
    assert np.allclose(px["g_cmyk.jpg"], (255, 0, 0), atol=6)
    assert px["h_anim.gif.png"] == (255, 0, 0)  # first frame
    assert px["i_lossless.webp"] == (1, 2, 3)
    assert px["j_plain.BMP"] == (4, 5, 6)
    assert px["k_plain.tiff"] == (7, 8, 9)
    assert shape["l_one_pixel.png"] == (3, 1, 1) and px["l_one_pixel.png"] == (10, 20, 30)
    assert np.allclose(px["sub/deeper/m_nested.jpeg"], (0, 255, 0), atol=6)


def test_truncated_file_substituted_deterministically(odd: Path) -> None:
    ds = _build(odd)
    i = _rel(ds).index(TRUNCATED)
    with pytest.warns(CorruptImageWarning, match=r"z3_truncated\.jpg.*truncated") as rec:
        sample = ds[i]
    assert len(rec) == 1
    nxt = (i + 1) % len(ds)
    assert sample["index"] == i and sample["path"] == ds.files[nxt]
    assert torch.equal(sample["image"], ds[nxt]["image"])
    assert [os.path.basename(s.path) for s in ds.skipped][-1] == TRUNCATED
    n_skipped = len(ds.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second visit: no new warning, no new record
        again = ds[i]
    assert again["path"] == sample["path"] and len(ds.skipped) == n_skipped


def test_dataloader_over_odd_folder_yields_only_valid_rgb(odd: Path) -> None:
    ds = _build(odd)
    loader = DataLoader(ds, batch_size=4, num_workers=0, collate_fn=list)
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        for batch in loader:
            for s in batch:
                img = s["image"]
                assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
                assert min(img.shape[1:]) >= 1
                assert os.path.basename(s["path"]) != TRUNCATED
                seen += 1
    assert seen == len(ds) == len(GOOD) + 1


def test_on_corrupt_raise_names_file(odd: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"z0_zero\.jpg: empty file"):
        ImageFolderDataset(odd, on_corrupt="raise")
    lazy = tmp_path / "lazy"
    lazy.mkdir()
    Image.new("RGB", (4, 4)).save(lazy / "ok.png")
    (lazy / TRUNCATED).write_bytes((odd / TRUNCATED).read_bytes())
    ds = ImageFolderDataset(lazy, on_corrupt="raise")
    with pytest.raises(ImageDecodeError, match=r"z3_truncated\.jpg: corrupt or truncated"):
        ds[ds.files.index(str(lazy / TRUNCATED))]


def test_empty_folder_error_names_folder_and_extensions(tmp_path: Path) -> None:
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty_dir.*\.jpg, \.jpeg, \.png"):
        ImageFolderDataset(empty)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no image files under .*empty_dir"):
        ImageFolderDataset(empty)


def test_only_corrupt_files_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no decodable image \(1 skipped\)"):
        _build(tmp_path)


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.* does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    f = tmp_path / "x.png"
    Image.new("RGB", (2, 2)).save(f)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(f)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_corrupt"):
        ImageFolderDataset(tmp_path, on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_size"):
        ImageFolderDataset(tmp_path, min_size=-1)


def test_non_utf8_file_name(tmp_path: Path) -> None:
    root = tmp_path / "latin1"
    root.mkdir()
    name = b"caf\xe9.png"  # Latin-1 byte: invalid UTF-8
    try:
        fd = os.open(os.path.join(os.fsencode(root), name), os.O_WRONLY | os.O_CREAT, 0o644)
    except (OSError, UnicodeError) as e:
        pytest.skip(f"filesystem refuses non-UTF-8 file names: {e}")
    with os.fdopen(fd, "wb") as fh:
        Image.new("RGB", (3, 3), (9, 9, 9)).save(fh, format="PNG")
    (root / "bad.png").write_bytes(b"")
    with pytest.warns(CorruptImageWarning):
        ds = ImageFolderDataset(root)
    assert len(ds) == 1
    sample = ds[0]
    assert os.fsencode(sample["path"]).endswith(name)
    assert tuple(int(v) for v in sample["image"][:, 1, 1]) == (9, 9, 9)
    msg = str(ImageDecodeError(sample["path"], "x"))
    assert "caf\\xe9.png: x" in msg and msg.encode("utf-8")  # printable, no surrogates


def test_unreadable_directory_skipped_with_counted_warning(odd: Path, monkeypatch) -> None:
    # Running as root makes chmod 000 ineffective, so simulate EACCES on one directory.
    real_scandir = os.scandir
    locked = str(odd / "sub" / "deeper")

    def fake_scandir(path):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(odd)
    unread = [w for w in rec if issubclass(w.category, UnreadableDirectoryWarning)]
    assert len(unread) == 1 and "1 unreadable directory" in str(unread[0].message)
    assert ds.unreadable_dirs == [locked]
    assert "sub/deeper/m_nested.jpeg" not in _rel(ds)


def test_symlinked_directory_followed_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (2, 2)).save(real / "x.png")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(real, root / "link_a")
    os.symlink(real, root / "link_b")  # same directory by two routes: listed once
    os.symlink(root / "missing.png", root / "dangling.png")
    files, broken, unreadable = list_image_files(root)
    assert [os.path.relpath(f, root) for f in files] == ["link_a/x.png"]
    assert [os.path.basename(b) for b in broken] == ["dangling.png"]
    assert unreadable == []


def test_min_size_upscales_shorter_side(odd: Path) -> None:
    ds = _build(odd, min_size=16)
    by = {os.path.relpath(f, odd): i for i, f in enumerate(ds.files)}
    assert tuple(ds[by["a_rgb.jpg"]]["image"].shape) == (3, 16, 32)  # 20x10 → 32x16
    assert tuple(ds[by["f_exif6.jpg"]]["image"].shape) == (3, 40, 16)  # 12x30 → 16x40
    one = ds[by["l_one_pixel.png"]]["image"]
    assert tuple(one.shape) == (3, 16, 16) and (one[0] == 10).all() and (one[2] == 30).all()
    big = ds[by["sub/deeper/m_nested.jpeg"]]["image"]  # 8x8 → 16x16
    assert tuple(big.shape) == (3, 16, 16)


def test_upscale_keeps_large_images_and_aspect() -> None:
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    assert upscale_to_min_size(img, 20) is img and upscale_to_min_size(img, 0) is img
    up = upscale_to_min_size(img, 40)
    assert up.dtype == torch.uint8 and tuple(up.shape) == (3, 40, 60)
    flat = torch.full((3, 3, 5), 77, dtype=torch.uint8)
    assert (upscale_to_min_size(flat, 7) == 77).all()  # no bicubic overshoot on flat input
