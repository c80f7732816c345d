"""The one error type for bad user input (config keys, files, dataset layouts).

The CLI turns it into ``densessl: error: ...`` with exit status 2 and no traceback; the
message names the key or file and what is wrong.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""
