"""The one error type for bad user input (config keys, files, dataset layouts).

The CLI turns it into ``densessl: error: ...`` with exit status 2 and no traceback; the
message names the key or file and what is wrong.
"""

from __future__ import annotations

import reprlib


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


class DataError(ValueError):
    """A data file is unusable (a label with unknown ids, of the wrong size or format); the
    message names the file. Raised while reading, so possibly in a DataLoader worker."""


#: Longest rendering of a user-given value inside an error message (:func:`brief`).
BRIEF_LIMIT = 80


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\n``, ``\\x1b``,
    ``\\udcff`` for an undecodable byte of a file name), so a message stays one line and
    prints on any terminal. Printable text (spaces, accents, CJK) is unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def brief(value: object, limit: int = BRIEF_LIMIT) -> str:
    """``repr(value)``, escaped by :func:`printable` and cut to about ``limit`` characters.

    Every message that shows a value the user typed uses it, so a huge value (a pasted
    file, a YAML expansion) never becomes a huge message; containers are shortened by
    :mod:`reprlib` (no full ``repr`` of a large list is ever built).
    """
    size = len(value) if isinstance(value, str | bytes) else None
    if size is not None and size > 4 * limit:
        value = value[: 4 * limit]  # type: ignore[index]
    try:
        text = printable(_REPR.repr(value) if size is None else repr(value))
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too long to print>"
    if len(text) > limit:
        text = text[: limit - 1] + "…" + (f" ({size:,} characters)" if size else "")
    return text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 6
_REPR.maxstring = _REPR.maxother = BRIEF_LIMIT
