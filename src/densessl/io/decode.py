"""Decode one image file into densessl's common representation, robustly.

Every image in densessl is an RGB ``torch.uint8`` tensor of shape ``[3, H, W]``. Files met in
the wild are not all 8-bit RGB, so :func:`load_rgb` normalises them:

============================  ==============================================================
file                          result
============================  ==============================================================
RGB                           as stored
grayscale ``L`` / 1-bit       channel replicated (1-bit: 0 / 255)
palette ``P``                 palette looked up; transparent entries composited (see below)
RGBA / LA / PA / tRNS         alpha-composited onto :data:`BACKGROUND` (mid grey)
16-bit ``I;16*`` / ``I``      ``round(v / 257)``: 0 → 0, 32768 → 128, 65535 → 255
32-bit ``I`` outside 0..65535 min–max stretched to 0..255
float ``F``                   0..1 → 0..255 if it lies in [0, 1], else min–max stretched
CMYK (JPEG)                   Pillow's CMYK → RGB (Adobe-inverted JPEGs handled by Pillow)
EXIF orientation              applied (``ImageOps.exif_transpose``); broken EXIF is ignored
animated GIF / WebP / APNG    first frame
============================  ==============================================================

Safety: the pixel count is read from the header (``Image.open`` does not decode) and checked
against ``max_pixels`` *before* any decoding, so decompression bombs are refused cheaply.
Only the raster formats in :data:`DECODE_FORMATS` are tried, so a stray ``.png`` that is
really PostScript never reaches Ghostscript. Pillow's global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are never changed; note
that Pillow still refuses on its own images above ``2 * Image.MAX_IMAGE_PIXELS``, whatever
``max_pixels`` says. Every failure (missing, unreadable, empty, not an image, truncated,
corrupt, too large) raises :class:`ImageDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from densessl.errors import printable

__all__ = [
    "BACKGROUND",
    "DECODE_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "display_path",
    "has_image_extension",
    "load_rgb",
    "probe_image",
]

#: File extensions (lower case, without the dot) treated as images; matched case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")

#: Pixel limit (width * height) above which images are refused. Same as the size at which
#: Pillow itself raises ``DecompressionBombError`` by default (2 * 89_478_485).
DEFAULT_MAX_PIXELS: int = 178_956_970

#: Colour that transparent pixels are composited onto (mid grey, neither black nor white).
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

#: Pillow format identifiers that are tried when opening a file (whatever its extension).
#: MPO is how Pillow opens many camera JPEGs; GIF covers ``.png``/``.webp``-named GIFs.
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF")

_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_PIL_BOMB_RE = re.compile(r"\((\d+) pixels\)")


class ImageDecodeError(ValueError):
    """An image file could not be turned into an RGB uint8 tensor; the message names the file.

    Attributes:
        path: the offending file (as given, may contain surrogate-escaped bytes).
        reason: short human-readable reason, without the file name.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode image {display_path(self.path)}: {printable(reason)}")


def display_path(path: str | os.PathLike[str] | bytes, limit: int = 1000) -> str:
    """``path`` as one printable line: undecodable bytes of non-UTF-8 names become ``\\xNN``,
    control characters (newline, tab, ESC, ...) their escapes (``\\n``, ``\\x1b``); a path
    longer than ``limit`` characters keeps its start and end around ``...``."""
    raw = os.fsencode(path)
    if len(raw) > 4 * limit:
        raw = raw[: 2 * limit] + b"..." + raw[-2 * limit :]
    text = printable(raw.decode("utf-8", errors="backslashreplace"))
    if len(text) > limit:
        text = f"{text[: limit // 2]}...{text[-(limit // 2) :]}"
    return text


def has_image_extension(name: str | os.PathLike[str]) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    ext = os.path.splitext(os.fspath(name))[1]
    return ext[1:].lower() in IMAGE_EXTENSIONS


_open_formats_cache: tuple[str, ...] | None = None


def _open_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for an unregistered format name, so keep only known ones.
    global _open_formats_cache
    if _open_formats_cache is None:
        Image.init()
        _open_formats_cache = tuple(f for f in DECODE_FORMATS if f in Image.OPEN)
    return _open_formats_cache


def _open(path: str | os.PathLike[str], max_pixels: int | None) -> Image.Image:
    """Open ``path`` lazily (header only) and enforce the pixel limit; caller closes it."""
    try:
        size_bytes = os.stat(path).st_size
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from e
    if size_bytes == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's warning between its two limits is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=_open_formats())
    except Image.DecompressionBombError as e:
        match = _PIL_BOMB_RE.search(str(e))
        count = f"{int(match.group(1)):,} pixels" if match else str(e)
        limit = f"{max_pixels:,}" if max_pixels is not None else "none"
        raise ImageDecodeError(
            path,
            f"image has {count}, above the limit (max_pixels={limit}; Pillow's own limit "
            f"2 * Image.MAX_IMAGE_PIXELS={2 * (Image.MAX_IMAGE_PIXELS or 0):,}); "
            "possible decompression bomb",
        ) from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError(
            path,
            f"not a recognised image ({size_bytes:,} bytes; tried {', '.join(_open_formats())})",
        ) from e
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from e
    except Exception as e:  # corrupt headers surface as many exception types in Pillow
        raise ImageDecodeError(path, f"corrupt header ({type(e).__name__}: {e})") from e
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageDecodeError(path, f"invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageDecodeError(
            path,
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} pixels (max_pixels); possible decompression bomb",
        )
    return im


def probe_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Cheap header check: ``(width, height)`` as stored, without decoding the pixels.

    Catches missing/empty/non-image files and images above ``max_pixels``; truncated or
    corrupt pixel data is only found by :func:`load_rgb`.

    Raises:
        ImageDecodeError: naming the file and the reason.
    """
    im = _open(path, max_pixels)
    try:
        return im.size
    finally:
        im.close()


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _high_depth_to_l(im: Image.Image) -> np.ndarray:
    """Single-channel 16/32-bit integer or float image → uint8 array [H, W]."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        if arr.min() >= 0.0 and arr.max() <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8)
        return _stretch(arr)
    arr = arr.astype(np.int64)
    if im.mode.startswith("I;16") or (arr.min() >= 0 and arr.max() <= 65535):
        # Exact 16 → 8 bit: v / 257 rounded (v = 257 * x for 8-bit data stored as 16-bit).
        return ((arr + 128) // 257).astype(np.uint8)
    return _stretch(arr)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _ALPHA_MODES:
        return _composite(im, background)
    if mode in ("P", "L", "RGB", "1") and "transparency" in im.info:
        try:
            return _composite(im, background)
        except (ValueError, OSError):
            pass  # unusable transparency entry: fall back to the opaque colours
    if mode == "1":
        return im.convert("L").convert("RGB")
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        return Image.fromarray(_high_depth_to_l(im), mode="L").convert("RGB")
    return im.convert("RGB")


def load_rgb(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    background: tuple[int, int, int] = BACKGROUND,
) -> torch.Tensor:
    """Decode an image file into an RGB ``torch.uint8`` tensor ``[3, H, W]``.

    Args:
        path: image file; its extension is not trusted (the content decides the format).
        max_pixels: refuse images with more than this many pixels (width * height), checked
            from the header before decoding. ``None`` disables this check (Pillow's own hard
            limit still applies).
        background: RGB colour transparent pixels are composited onto.

    Returns:
        Tensor ``[3, H, W]`` (H, W after applying EXIF orientation), contiguous, uint8.

    Raises:
        ImageDecodeError: (a ``ValueError``) naming the file and the reason: unreadable,
            empty, not an image, above ``max_pixels``, truncated or corrupt data.
    """
    im = _open(path, max_pixels)
    try:
        try:
            im.seek(0)  # animated GIF / WebP / APNG: first frame (already current after open)
            im.load()
        except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError...
            reason = str(e) or type(e).__name__
            raise ImageDecodeError(path, f"corrupt or truncated data ({reason})") from e
        with contextlib.suppress(Exception):  # malformed EXIF must not lose a good image
            ImageOps.exif_transpose(im, in_place=True)
        try:
            rgb = _to_rgb(im, background)
            arr = np.array(rgb, dtype=np.uint8)
        except Exception as e:
            raise ImageDecodeError(
                path, f"cannot convert mode {im.mode!r} to RGB ({type(e).__name__}: {e})"
            ) from e
    finally:
        im.close()
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(path, f"unexpected decoded shape {arr.shape}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
