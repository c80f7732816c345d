"""``python -m densessl`` (used by ``torchrun -m densessl pretrain ...``)."""

from densessl.cli import main

raise SystemExit(main())
