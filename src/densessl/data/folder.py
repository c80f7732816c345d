"""Unlabeled image folder: every image file under a root, decoded robustly.

Listing
    Files whose extension is in :data:`~densessl.io.decode.IMAGE_EXTENSIONS` (any case),
    searched recursively by default. Directory symlinks are followed, but each real
    directory is visited once (keyed by device + inode), so symlink loops terminate and a
    folder reachable twice is not listed twice. Unreadable directories are skipped and
    counted in one :class:`UnreadableDirectoryWarning`. Names that are not valid UTF-8 are
    kept as Python's surrogate-escaped ``str`` (they open fine); messages print them with
    ``\\xNN`` escapes. The order is the sorted byte order of the relative paths, so it is
    the same on every machine and every process.

Corrupt files (``on_corrupt="skip"``, the default) -- the dataset never crashes mid-epoch:
    1. At construction a cheap header scan (``PIL.Image.open``, no pixel decoding) drops
       empty files, non-images, broken links and images above ``max_pixels``. They are
       listed in :attr:`ImageFolderDataset.skipped` and reported by ONE
       :class:`CorruptImageWarning` counting them and naming the first five.
    2. Damage only visible when decoding (truncated or corrupt pixel data) is found in
       ``__getitem__``: the sample of the next decodable index (wrapping around) is returned
       instead, so the dataset length never changes and the substitution is deterministic.
       The file is appended to ``skipped`` and warned about once (per process: with
       ``DataLoader(num_workers>0)`` each worker holds its own copy of ``skipped``).

    With ``on_corrupt="raise"`` the first bad file raises
    :class:`~densessl.io.decode.ImageDecodeError` naming it (construction for header
    failures, ``__getitem__`` for decode failures).

Small images
    ``min_size > 0`` upscales images whose shorter side is below ``min_size`` (bicubic,
    aspect ratio kept, shorter side becomes exactly ``min_size``), so random crops of that
    size always fit. Larger images are untouched. 1x1 images work (they become flat).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from densessl.errors import printable
from densessl.io.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    display_path,
    has_image_extension,
    load_rgb,
    probe_image,
)

__all__ = [
    "CorruptImageWarning",
    "ImageFolderDataset",
    "SkippedFile",
    "UnreadableDirectoryWarning",
    "list_image_files",
    "upscale_to_min_size",
]

_NAMED_IN_WARNING = 5


class CorruptImageWarning(UserWarning):
    """Some image files were skipped because they cannot be decoded."""


class UnreadableDirectoryWarning(UserWarning):
    """Some directories under the dataset root could not be listed and were skipped."""


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of (or substituted in) the dataset, and why."""

    path: str
    reason: str


def _dir_key(st: os.stat_result, path: str) -> tuple[int, int] | str:
    if st.st_ino:
        return (st.st_dev, st.st_ino)
    return os.path.realpath(path)  # filesystems without inode numbers


def list_image_files(
    root: str | os.PathLike[str], *, recursive: bool = True
) -> tuple[list[str], list[str], list[str]]:
    """Image files under ``root`` in deterministic order.

    Returns:
        ``(files, broken_links, unreadable_dirs)``: ``files`` are paths (``root`` joined with
        the relative path) sorted by the bytes of the relative path; ``broken_links`` are
        image-named symlinks whose target is missing or looping; ``unreadable_dirs`` are
        directories that could not be listed.
    """
    root = os.fspath(root)
    rel_files: list[str] = []
    broken: list[str] = []
    unreadable: list[str] = []
    visited: set[tuple[int, int] | str] = set()
    stack: list[str] = [""]  # relative directory paths still to list
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            st = os.stat(abs_dir)
            key = _dir_key(st, abs_dir)
            if key in visited:
                continue  # symlink loop or second route to the same directory
            visited.add(key)
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError:
            unreadable.append(abs_dir)
            continue
        subdirs: list[str] = []
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError:  # e.g. ELOOP on a self-referencing link
                is_dir = is_file = False
            if is_dir:
                if recursive:
                    subdirs.append(rel)
            elif has_image_extension(entry.name):
                if is_file:
                    rel_files.append(rel)
                elif entry.is_symlink():
                    broken.append(os.path.join(root, rel))
                # else: fifo / socket / device named like an image: ignored
        stack.extend(reversed(subdirs))
    rel_files.sort(key=os.fsencode)
    return [os.path.join(root, r) for r in rel_files], broken, unreadable


def upscale_to_min_size(image: torch.Tensor, min_size: int) -> torch.Tensor:
    """Bicubically upscale ``image`` (uint8 ``[C, H, W]``) so its shorter side is ``min_size``.

    The aspect ratio is kept (longer side rounded, at least ``min_size``). Images whose
    shorter side is already ``>= min_size`` are returned unchanged.
    """
    if min_size <= 0:
        return image
    h, w = image.shape[-2:]
    short = min(h, w)
    if short >= min_size:
        return image
    scale = min_size / short
    new_h = min_size if h == short else max(min_size, round(h * scale))
    new_w = min_size if w == short else max(min_size, round(w * scale))
    # Border pixels are clamped by PyTorch's bicubic kernel, so even 1x1 inputs work.
    x = image.unsqueeze(0).float()
    y = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).squeeze(0)


class ImageFolderDataset(Dataset):
    """Every image under ``root``; samples are ``{"image", "index", "path"}``.

    See the module docstring for listing order, corrupt-file handling and upscaling.

    Args:
        root: folder to search.
        recursive: search sub-folders too (directory symlinks followed, loops cut).
        on_corrupt: ``"skip"`` (drop / substitute and warn) or ``"raise"``.
        min_size: upscale images whose shorter side is below this (0 = never).
        max_pixels: refuse images with more pixels (width * height); ``None`` = no limit of
            our own (Pillow's hard limit still applies).
        header_scan: check every file's header at construction (one ``Image.open`` per file,
            no decoding). Disable for huge trusted folders on slow storage; bad files are
            then only found lazily in ``__getitem__``.

    Attributes:
        files: image paths, in dataset order.
        skipped: :class:`SkippedFile` records: header-scan drops at construction, then
            decode failures as ``__getitem__`` meets them (per process).
        unreadable_dirs: directories that could not be listed.

    Raises:
        FileNotFoundError: ``root`` missing or not a directory, or no image file under it
            (the message names the folder and the extensions looked for).
        ImageDecodeError: with ``on_corrupt="raise"``, naming the first bad file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        recursive: bool = True,
        on_corrupt: Literal["skip", "raise"] = "skip",
        min_size: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        header_scan: bool = True,
    ) -> None:
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        if max_pixels is not None and max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
        self.root = os.fspath(root)
        self.recursive = recursive
        self.on_corrupt = on_corrupt
        self.min_size = int(min_size)
        self.max_pixels = max_pixels
        if not os.path.exists(self.root):
            raise FileNotFoundError(f"image folder {display_path(self.root)} does not exist")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {display_path(self.root)} is not a directory")

        files, broken, self.unreadable_dirs = list_image_files(self.root, recursive=recursive)
        if self.unreadable_dirs:
            names = ", ".join(display_path(d) for d in self.unreadable_dirs[:_NAMED_IN_WARNING])
            warnings.warn(
                f"{len(self.unreadable_dirs)} unreadable director"
                f"{'y' if len(self.unreadable_dirs) == 1 else 'ies'} under "
                f"{display_path(self.root)} skipped: {names}",
                UnreadableDirectoryWarning,
                stacklevel=2,
            )
        n_found = len(files) + len(broken)
        if n_found == 0:
            raise FileNotFoundError(self._no_images_message("no image files"))

        self.skipped: list[SkippedFile] = []
        for link in broken:
            if on_corrupt == "raise":
                raise ImageDecodeError(link, "broken symbolic link")
            self.skipped.append(SkippedFile(link, "broken symbolic link"))
        self.files: list[str] = []
        for path in files:
            if header_scan:
                try:
                    probe_image(path, max_pixels)
                except ImageDecodeError as e:
                    if on_corrupt == "raise":
                        raise
                    self.skipped.append(SkippedFile(path, e.reason))
                    continue
            self.files.append(path)
        if self.skipped:
            named = "; ".join(
                f"{display_path(s.path)} ({printable(s.reason)})"
                for s in self.skipped[:_NAMED_IN_WARNING]
            )
            more = len(self.skipped) - _NAMED_IN_WARNING
            warnings.warn(
                f"skipped {len(self.skipped)} of {n_found} image files under "
                f"{display_path(self.root)} that cannot be decoded: {named}"
                + (f"; and {more} more" if more > 0 else ""),
                CorruptImageWarning,
                stacklevel=2,
            )
        if not self.files:
            raise FileNotFoundError(
                self._no_images_message(f"no decodable image ({len(self.skipped)} skipped)")
            )
        self._bad: set[int] = set()  # indices whose full decode failed (this process)

    def _no_images_message(self, what: str) -> str:
        exts = ", ".join(f".{e}" for e in IMAGE_EXTENSIONS)
        where = "under" if self.recursive else "directly in"
        return f"{what} {where} {display_path(self.root)} (looked for extensions {exts}, any case)"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, object]:
        """``{"image": uint8 [3, H, W], "index": index, "path": str}``.

        ``index`` is the requested index; ``path`` is the file actually decoded (a different
        one when the requested file turned out corrupt and was substituted).
        """
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index = index % n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            path = self.files[j]
            try:
                image = load_rgb(path, self.max_pixels)
            except ImageDecodeError as e:
                if self.on_corrupt == "raise":
                    raise
                self._bad.add(j)
                self.skipped.append(SkippedFile(path, e.reason))
                warnings.warn(
                    f"{e}; using the next decodable image instead",
                    CorruptImageWarning,
                    stacklevel=2,
                )
                continue
            image = upscale_to_min_size(image, self.min_size)
            return {"image": image, "index": index, "path": path}
        raise ImageDecodeError(
            self.root, f"none of the {n} image files in this folder can be decoded"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={display_path(self.root)!r}, images={len(self)}, "
            f"skipped={len(self.skipped)}, min_size={self.min_size})"
        )
