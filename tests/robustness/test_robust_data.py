"""Data: odd files are skipped with one counted warning naming them (or, with
``data.on_corrupt=raise``, an error naming the file); training never crashes mid-epoch.

Already covered elsewhere (not repeated): ``tests/io/test_decode.py`` (CMYK JPEG, animated
GIF / WebP first frame, 16-bit PNG, 1x1 PNG, zero-byte, text named .png, truncated JPEG,
decompression bomb refused from the header), ``tests/data/test_folder.py`` (a folder of all
of them: counted warning, deterministic substitution, symlink-loop directories, unreadable
directory, non-UTF-8 file name, empty folder), ``tests/data/test_segmentation.py``
(``test_voc_errors``: label size differs from the image, label ids outside the class range).
"""

from __future__ import annotations

import builtins
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densessl.data.folder import CorruptImageWarning, ImageFolderDataset
from densessl.io.checkpoint import load_training_state
from densessl.io.decode import ImageDecodeError
from densessl.train.trainer import Trainer
from helpers import robust_config


def _deny_reading(monkeypatch, path: Path) -> None:
    """Make ``path`` unreadable: chmod 000 when that is effective, else a patched ``open``
    (running as root ignores file permissions)."""
    if os.geteuid() != 0:
        path.chmod(0)  # the test restores the mode at its end
        return
    real_open = builtins.open
    target = os.fspath(path)

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file) == target if isinstance(file, (str, os.PathLike)) else False:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


def test_unreadable_file_is_skipped_with_counted_warning(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "ok.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    _deny_reading(monkeypatch, tmp_path / "secret.png")
    with pytest.warns(CorruptImageWarning, match=r"skipped 1 of 2 .*secret\.png.*ermission"):
        ds = ImageFolderDataset(tmp_path)
    assert [os.path.basename(f) for f in ds.files] == ["ok.png"]
    with pytest.raises(ImageDecodeError, match=r"secret\.png: cannot read file"):
        ImageFolderDataset(tmp_path, on_corrupt="raise")
    if os.geteuid() != 0:
        (tmp_path / "secret.png").chmod(0o644)


def test_symlink_loop_between_files_is_skipped(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")  # a.png -> b.png -> a.png: ELOOP
    with pytest.warns(CorruptImageWarning, match=r"skipped 2 of 3 .*broken symbolic link"):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 1


def test_non_utf8_directory_and_corrupt_file_names_print_cleanly(tmp_path):
    root = os.fsencode(tmp_path)
    try:
        os.mkdir(os.path.join(root, b"d\xff"))
    except (OSError, UnicodeError) as e:
        pytest.skip(f"filesystem refuses non-UTF-8 names: {e}")
    Image.new("RGB", (3, 3)).save(os.fsdecode(os.path.join(root, b"d\xff", b"ok.png")))
    with open(os.path.join(root, b"d\xff", b"bad\xe9.png"), "wb") as fh:
        fh.write(b"junk")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(tmp_path)
    (warning,) = [w for w in rec if issubclass(w.category, CorruptImageWarning)]
    text = str(warning.message)
    assert "d\\xff/bad\\xe9.png" in text
    text.encode("utf-8")  # no lone surrogates: printable in any UTF-8 log
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 3, 3)


def _odd_training_folder(root: Path) -> Path:
    root.mkdir()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one_pixel.png")
    Image.fromarray(np.full((9, 7), 40000, np.uint16)).save(root / "gray16.png")
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif.png", format="GIF", save_all=True, append_images=frames[1:])
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    Image.new("LA", (5, 40), (90, 0)).save(root / "tall_alpha.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "t.jpg")
    data = (root / "t.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])  # found only when decoded
    (root / "t.jpg").unlink()
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    return root


def test_training_over_a_folder_of_odd_images_never_crashes(tmp_path):
    """1x1, 16-bit, CMYK, animated, alpha images train; bad files are skipped or
    substituted, with one counted warning, across whole epochs."""
    folder = _odd_training_folder(tmp_path / "odd")
    cfg = robust_config(f"data.path={folder}", "optim.steps=4", "train.checkpoint_every=4")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer = Trainer(cfg, tmp_path / "run")
        trainer.fit()  # 7 usable files, batch 4: 1 step per epoch, 4 epochs
    messages = [str(w.message) for w in rec if issubclass(w.category, CorruptImageWarning)]
    assert any("skipped 2 of 9" in m and "zero.jpg" in m and "text.png" in m for m in messages)
    assert any("truncated.jpg" in m and "next decodable image" in m for m in messages)
    assert load_training_state(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
