"""Which checkpoint format a user named (``--format NAME``), without importing torch.

The CLI sets it once per command (:func:`use_format`); the loaders read it
(:func:`requested_format`) when their own ``fmt`` argument is ``None``, so ``--backbone``,
``--init`` and ``densessl export`` all honour it. ``None`` means: detect from the file.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["FORMAT_NAMES", "check_format", "requested_format", "use_format"]

#: Formats a file can be named as: the released ones, official DINO and densessl's own.
FORMAT_NAMES = (
    "dino",
    "dinov2",
    "dinov3",
    "densessl",
    "selfpatch",
    "leopart",
    "loca",
    "flsl",
    "neco",
)

_REQUESTED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "densessl_checkpoint_format", default=None
)


def check_format(name: str | None) -> str | None:
    """``name`` itself when it is ``None`` or one of :data:`FORMAT_NAMES`.

    Raises:
        ValueError: any other name (the message lists the known ones).
    """
    if name is not None and name not in FORMAT_NAMES:
        raise ValueError(f"unknown checkpoint format {name!r}; choose one of {FORMAT_NAMES}")
    return name


def requested_format() -> str | None:
    """The format set by the innermost :func:`use_format`, or ``None`` (detect)."""
    return _REQUESTED.get()


@contextlib.contextmanager
def use_format(name: str | None) -> Iterator[None]:
    """Within the block, files are read as format ``name`` (``None``: detected)."""
    token = _REQUESTED.set(check_format(name))
    try:
        yield
    finally:
        _REQUESTED.reset(token)
