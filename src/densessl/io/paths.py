"""Paths as users type them."""

from __future__ import annotations

import os
from pathlib import Path


def user_path(path: str | os.PathLike[str]) -> Path:
    """``Path(path)`` with a leading ``~`` or ``~user`` expanded as the shell does.

    ``Path.expanduser`` raises ``RuntimeError`` for an unknown ``~user`` (or no home
    directory); here such a path stays as typed, so it is reported as a missing file.
    """
    return Path(os.path.expanduser(os.fspath(path)))
