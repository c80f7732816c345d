"""A full disk, said plainly: :class:`DiskFullError` names the folder that ran out of space.

Writers fail on a full disk in their own words: Python raises ``OSError(ENOSPC)`` without a
file name when a buffered write or ``fsync`` fails; ``torch.save`` into a file object loses
that error and raises ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``;
safetensors raises ``SafetensorError: ... No space left on device (os error 28)``.
:func:`disk_full_named` turns all of them into one :class:`DiskFullError` for a target file
(checkpoints, exports, evaluation results), and :class:`RecordingWriter` keeps the
``OSError`` that ``torch.save`` would lose.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["DiskFullError", "RecordingWriter", "disk_full_named", "is_disk_full"]

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded")


class DiskFullError(OSError):
    """Writing ``path`` failed because its file system is full (or over quota)."""

    def __init__(self, path: Path | str, what: str = "", kept: bool = False) -> None:
        path = Path(path)
        folder = path.parent
        what = what or path.name
        free = _free_space(folder)
        kept_text = f"; the previous {path.name} is kept" if kept else ""
        self.message = (
            f"No space left on device: cannot write {what} into {folder} ({free} free)"
            f"{kept_text}. Free some space there or give another folder"
        )
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"  # pragma: no cover - the loop returns


def is_disk_full(err: BaseException | None) -> bool:
    """True for an error (or one it was raised from) that says the disk is full."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, DiskFullError):
            return True
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        if any(text in str(err) for text in _FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


class RecordingWriter:
    """A binary file wrapper that remembers the ``OSError`` a write raised (``error``).

    ``torch.save`` calls ``write`` from C++ and replaces the error by "unexpected pos";
    :func:`disk_full_named` looks here for the real one.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


@contextlib.contextmanager
def disk_full_named(
    path: Path | str, what: str = "", writer: RecordingWriter | None = None, kept: bool = False
) -> Iterator[None]:
    """Re-raise a full-disk failure inside the block as :class:`DiskFullError` for ``path``.

    Args:
        path: the file being written (its folder is named in the message).
        what: how to call it (default: its name), e.g. ``"the checkpoint last.pt"``.
        writer: the :class:`RecordingWriter` ``torch.save`` wrote through, if any.
        kept: say that the previous file at ``path`` is kept (atomic writes).
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err) or (writer is not None and is_disk_full(writer.error)):
            raise DiskFullError(path, what, kept and Path(path).exists()) from err
        raise
