"""Command line: ``densessl pretrain|eval|finetune|viz|export|methods|scenes|demo``.

Thin wrappers over the API. :mod:`~densessl.cli.parser` lists the commands and runs one,
:mod:`~densessl.cli.eval_command` builds ``eval`` from the protocol registry,
:mod:`~densessl.cli.options` holds options several commands share, :mod:`~densessl.cli.help_text`
the long help texts, and :mod:`~densessl.cli.errors` turns user errors into one line and exit 2.
"""

from densessl.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
