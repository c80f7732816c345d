"""Command-line options shared by several ``densessl`` commands (argparse types and flags)."""

from __future__ import annotations

import argparse

__all__ = ["add_format_option", "positive"]


def positive(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option and exits with 2)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def add_format_option(parser: argparse.ArgumentParser) -> None:
    from densessl.models.formats.choice import FORMAT_NAMES  # no torch import

    parser.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default=None,
        help="checkpoint format of the weights file (default: detected from the file)",
    )
