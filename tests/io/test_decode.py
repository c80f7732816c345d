"""load_rgb: every odd kind of file becomes RGB uint8 [3, H, W] with the right values."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from densessl.io.decode import (
    BACKGROUND,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    has_image_extension,
    load_rgb,
    probe_image,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _px(img: torch.Tensor, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[:, y, x])


def _stored(path: Path) -> tuple[str, int]:
    """(mode, number of frames) of the file as Pillow opens it, closing the file."""
    with Image.open(path) as im:
        return im.mode, getattr(im, "n_frames", 1)


def _check_rgb(img: torch.Tensor, h: int, w: int) -> None:
    assert img.dtype == torch.uint8
    assert tuple(img.shape) == (3, h, w)
    assert img.is_contiguous()


def _halves(w: int, h: int, left: tuple[int, int, int], right: tuple[int, int, int]):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG (and its CRC): a header-only 'bomb'."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


def test_extensions_case_insensitive() -> None:
    assert set(IMAGE_EXTENSIONS) == {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"}
    assert has_image_extension("a/B.JPG") and has_image_extension("x.TiFf")
    assert not has_image_extension("notes.txt") and not has_image_extension("png")


def test_rgb_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "a.jpg"
    _halves(32, 16, RED, BLUE).save(p, quality=95)
    img = load_rgb(p)
    _check_rgb(img, 16, 32)
    assert np.allclose(_px(img, 8, 4), RED, atol=8)
    assert np.allclose(_px(img, 8, 28), BLUE, atol=8)


def test_grayscale_png_replicated(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 77, 200]], np.uint8), mode="L").save(p)
    img = load_rgb(p)
    _check_rgb(img, 1, 3)
    assert img[:, 0, :].tolist() == [[0, 77, 200]] * 3


def test_one_bit_png(tmp_path: Path) -> None:
    p = tmp_path / "b.png"
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    im.save(p)
    img = load_rgb(p)
    _check_rgb(img, 2, 4)
    assert _px(img, 0, 1) == (255, 255, 255) and _px(img, 0, 0) == (0, 0, 0)


def test_palette_with_transparency_composited(tmp_path: Path) -> None:
    p = tmp_path / "p.png"
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, *RED, *GREEN] + [0] * (256 - 3) * 3)
    im.putpixel((1, 1), 1)
    im.putpixel((2, 2), 2)
    im.save(p, transparency=0)  # index 0 (black) fully transparent
    assert _stored(p)[0] == "P"
    img = load_rgb(p)
    _check_rgb(img, 4, 4)
    assert _px(img, 0, 0) == BACKGROUND  # transparent → neutral grey, not black
    assert _px(img, 1, 1) == RED and _px(img, 2, 2) == GREEN


def test_rgba_composited_onto_background(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (*RED, 255)  # opaque
    arr[0, 1] = (*RED, 0)  # fully transparent (colour must be ignored)
    arr[0, 2] = (*BLUE, 128)  # half
    Image.fromarray(arr, mode="RGBA").save(p)
    img = load_rgb(p)
    _check_rgb(img, 1, 3)
    assert _px(img, 0, 0) == RED
    assert _px(img, 0, 1) == BACKGROUND
    assert np.allclose(_px(img, 0, 2), (64, 64, 192), atol=2)
    assert _px(load_rgb(p, background=(255, 255, 255)), 0, 1) == (255, 255, 255)


def test_rgb_png_with_trns_colour_key(tmp_path: Path) -> None:
    p = tmp_path / "key.png"
    im = Image.new("RGB", (2, 1), RED)
    im.putpixel((1, 0), BLUE)
    im.save(p, transparency=BLUE)  # tRNS colour key: blue pixels are transparent
    img = load_rgb(p)
    assert _px(img, 0, 0) == RED and _px(img, 0, 1) == BACKGROUND


def test_la_png_composited(tmp_path: Path) -> None:
    p = tmp_path / "la.png"
    arr = np.array([[[200, 255], [10, 0]]], np.uint8)
    Image.fromarray(arr, mode="LA").save(p)
    img = load_rgb(p)
    assert _px(img, 0, 0) == (200, 200, 200) and _px(img, 0, 1) == BACKGROUND


def test_16bit_grayscale_scaled_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "g16.png"
    values = np.array([[0, 257, 32768, 65535, 257 * 200, 1000]], np.uint16)
    Image.fromarray(values).save(p)
    assert _stored(p)[0].startswith("I")
    img = load_rgb(p)
    _check_rgb(img, 1, 6)
    assert img[0, 0].tolist() == [0, 1, 128, 255, 200, 4]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])


def test_32bit_int_tiff_stretched(tmp_path: Path) -> None:
    p = tmp_path / "i32.tif"
    Image.fromarray(np.array([[-100000, 0, 100000]], np.int32), mode="I").save(p)
    img = load_rgb(p)
    assert img[0, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    _halves(40, 20, RED, BLUE).save(p, quality=95, exif=exif.tobytes())
    img = load_rgb(p)
    _check_rgb(img, 40, 20)  # stored 40 wide x 20 high → displayed 20 wide x 40 high
    # Stored left half (red) ends up on top after a clockwise quarter turn.
    assert np.allclose(_px(img, 5, 10), RED, atol=10)
    assert np.allclose(_px(img, 35, 10), BLUE, atol=10)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(p, quality=95)
    assert _stored(p)[0] == "CMYK"
    img = load_rgb(p)
    _check_rgb(img, 8, 16)
    assert np.allclose(_px(img, 4, 8), RED, atol=6)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 5), c) for c in (RED, BLUE, GREEN)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert _stored(p)[1] == 3
    img = load_rgb(p)
    _check_rgb(img, 5, 6)
    assert _px(img, 2, 3) == RED


def test_animated_webp_first_frame(tmp_path: Path) -> None:
    p = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (6, 5), c) for c in (GREEN, RED)]
    frames[0].save(p, save_all=True, append_images=frames[1:], lossless=True, duration=50)
    img = load_rgb(p)
    _check_rgb(img, 5, 6)
    assert _px(img, 2, 3) == GREEN


@pytest.mark.parametrize("ext,kwargs", [("webp", {"lossless": True}), ("bmp", {}), ("tiff", {})])
def test_lossless_formats_exact(tmp_path: Path, ext: str, kwargs: dict) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = tmp_path / f"x.{ext}"
    Image.fromarray(arr).save(p, **kwargs)
    img = load_rgb(p)
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1))


def test_one_pixel_png(tmp_path: Path) -> None:
    p = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(p)
    img = load_rgb(p)
    _check_rgb(img, 1, 1)
    assert _px(img, 0, 0) == (1, 2, 3)


def test_extension_not_trusted(tmp_path: Path) -> None:
    p = tmp_path / "actually_png.jpg"
    Image.new("RGB", (3, 2), BLUE).save(p, format="PNG")
    assert _px(load_rgb(p), 1, 2) == BLUE


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_rgb(p)


def test_text_file_named_png(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("hello, not an image\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.png: not a recognised image") as ei:
        probe_image(p)
    assert isinstance(ei.value, ValueError) and ei.value.path == str(p)


def test_postscript_named_png_is_not_handed_to_ghostscript(tmp_path: Path) -> None:
    p = tmp_path / "evil.png"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        load_rgb(p)


def test_truncated_jpeg_header_ok_decode_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good, quality=90)
    p = tmp_path / "trunc.jpg"
    data = good.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert probe_image(p) == (64, 64)  # the cheap scan cannot see it
    with pytest.raises(ImageDecodeError, match=r"trunc\.jpg: corrupt or truncated data"):
        load_rgb(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global Pillow state untouched


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"nope\.png: cannot read file"):
        load_rgb(tmp_path / "nope.png")


def test_header_bomb_refused_before_decoding(tmp_path: Path) -> None:
    buf = tmp_path / "small.png"
    Image.new("RGB", (2, 2)).save(buf)
    p = tmp_path / "bomb.png"
    p.write_bytes(_patch_png_size(buf.read_bytes(), 100_000, 100_000))
    with pytest.raises(ImageDecodeError) as ei:
        probe_image(p)
    msg = str(ei.value)
    assert "bomb.png" in msg and "10,000,000,000 pixels" in msg
    assert f"{DEFAULT_MAX_PIXELS:,}" in msg


def test_own_pixel_limit_configurable(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(p)
    with pytest.raises(ImageDecodeError, match=r"big\.png: image is 20x10 = 200 pixels, .*100"):
        load_rgb(p, max_pixels=100)
    assert load_rgb(p, max_pixels=200).shape == (3, 10, 20)
    assert load_rgb(p, max_pixels=None).shape == (3, 10, 20)


def test_large_limit_does_not_emit_pillow_warning(tmp_path: Path, recwarn) -> None:
    # Between Pillow's warning and error sizes (89M..179M px): our limit decides, silently.
    buf = tmp_path / "small.png"
    Image.new("L", (2, 2)).save(buf)
    p = tmp_path / "wide.png"
    p.write_bytes(_patch_png_size(buf.read_bytes(), 10_000, 10_000))  # 1e8 px, header only
    assert probe_image(p, max_pixels=DEFAULT_MAX_PIXELS) == (10_000, 10_000)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
