"""The one error type for bad user input (config keys, files, dataset layouts).

The CLI turns it into ``densessl: error: ...`` with exit status 2 and no traceback; the
message names the key or file and what is wrong.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


class DataError(ValueError):
    """A data file is unusable (a label with unknown ids, of the wrong size or format); the
    message names the file. Raised while reading, so possibly in a DataLoader worker."""
