"""One ``pretrain`` at a time per run directory: an exclusive lock on ``RUN/.densessl.lock``.

The lock is ``fcntl.flock`` on that file, so the kernel drops it whenever the holder ends,
however it ends (exception, Ctrl-C, SIGKILL, a crash): a lock file left behind by a dead
process is never in the way. The holder writes its pid, host, start time and command line
into the file, only for the message a second process prints. In a ``torchrun`` job only
rank 0 takes it (the other ranks of the job write nothing into the run directory).

Without ``fcntl`` (Windows) no lock is taken. A filesystem that refuses locks gets a warning
and the run goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from densessl.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".densessl.lock"

__all__ = ["LOCK_NAME", "RunLock", "holder_of"]


def holder_of(path: Path) -> str:
    """The holder recorded in a lock file, in words (``"holder unknown"`` when unreadable)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    if not isinstance(info, dict) or "pid" not in info:
        return "holder unknown: it is just starting"
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        when = "?"
    text = f"pid {info['pid']} on {info.get('host', '?')}, started {when}"
    if info.get("host") == socket.gethostname() and not _alive(info["pid"]):
        # Its forked DataLoader workers hold the lock until they notice (a few seconds).
        text += "; that process has ended, try again in a few seconds"
    return text


def _alive(pid: object) -> bool:
    try:
        os.kill(int(str(pid)), 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):
        return True  # another user's process, or a pid we cannot check
    return True


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ConfigError` naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            raise ConfigError(
                f"--out {self.root}: cannot open the lock file {self.path}: {err}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                warnings.warn(
                    f"{self.path}: this filesystem does not lock files ({err}); nothing stops "
                    "a second `densessl pretrain` from using the same --out",
                    stacklevel=2,
                )
                return
            raise ConfigError(
                f"--out {self.root} is in use by another densessl pretrain "
                f"({holder_of(self.path)}); two runs in one directory would overwrite each "
                "other's checkpoints. Wait for it to end or stop it, or give another --out"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "argv": sys.argv,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # the lock is what counts; the text is only for messages
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process opening it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        # Unlock explicitly: a forked DataLoader worker may still hold a copy of ``fd``.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
