"""The JSON result file of ``densessl eval --out``: never written over a user's file.

``--out`` may name a new file or an earlier densessl result (a JSON object with the
``protocol``, ``results`` and ``densessl_version`` keys every result has), which is
replaced atomically; anything else is refused before the evaluation starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from densessl.errors import ConfigError
from densessl.io.paths import user_path
from densessl.io.writes import disk_full_named

__all__ = ["check_result_path", "write_result"]

_RESULT_KEYS = ("protocol", "results", "densessl_version")


def _is_result(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in _RESULT_KEYS)


def check_result_path(out: str | os.PathLike[str] | None) -> Path | None:
    """``out`` as a path, refused (:class:`ConfigError`) if it is a folder or a file that is
    not a densessl evaluation result."""
    if out is None:
        return None
    path = user_path(out)
    if path.is_dir():
        raise ConfigError(f"eval --out {path} is a folder; give the JSON file to write")
    if path.exists() and not _is_result(path):
        raise ConfigError(
            f"eval --out {path} exists and is not a densessl evaluation result; densessl "
            "never overwrites files it did not write. Give another path"
        )
    return path


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to ``path`` atomically (folders are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with disk_full_named(path, "the result", kept=True), os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
