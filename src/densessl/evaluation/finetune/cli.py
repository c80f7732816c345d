"""``densessl finetune seg``: the parser and the command (wraps :func:`densessl.finetune`).

The decoders and settings come from :mod:`densessl.evaluation.finetune` (which imports
torch), so they are read only when the command is ``finetune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from densessl.cli.options import add_format_option, positive

FINETUNE_HELP = """\
Fine-tune a backbone end to end with a decoder on a labelled segmentation set (train split;
VOC: trainaug), then score it on val (mIoU and per-class IoU in OUT/finetune.json).
Real datasets get the decoder's published ADE20K recipe, the synthetic scenes a short CPU
preset; every setting can be overridden as key=value, dataset options as data.KEY=VALUE.
The same --out again resumes exactly after a stop (Ctrl-C / SIGTERM: exit 130 / 143).

decoders:
{decoders}

settings: {settings}

GPU, ADE20K (ADEChallengeData2016 under --root), ViT-S/16:
  densessl finetune seg --backbone RUN_OR_CHECKPOINT --dataset ade20k --root DATA \\
      --decoder semfpn --out runs/ft-semfpn
  densessl finetune seg --backbone RUN_OR_CHECKPOINT --dataset ade20k --root DATA \\
      --decoder linear --out runs/ft-linear
"""


def _cmd_finetune(args: argparse.Namespace) -> int:
    from densessl.evaluation.finetune.api import finetune

    start = time.perf_counter()
    finetune(
        args.task,
        args.backbone,
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        decoder=args.decoder,
        overrides=args.overrides,
        arch=args.arch,
        patch_size=args.patch_size,
        which=args.which,
        weights=args.weights,
        init_seed=args.init_seed,
        train_split=args.train_split,
        val_split=args.val_split,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


def add_finetune_parser(sub: Any, with_decoders: bool) -> None:
    """``densessl finetune TASK``; without ``with_decoders`` a stub that is never parsed."""
    summary = "fine-tune a backbone end to end with a decoder (semantic segmentation)"
    if not with_decoders:
        p = sub.add_parser("finetune", help=summary, add_help=False)
        p.set_defaults(func=None)
        return
    from densessl.data.segmentation.registry import dataset_names
    from densessl.evaluation.finetune.registry import list_decoders
    from densessl.evaluation.finetune.settings import FinetuneSettings

    records = list_decoders()
    listing = "\n".join(
        f"  {n:<7} {r.description}\n          follows {r.source}\n          expected "
        f"ADE20K mIoU: {r.expected}"
        for n, r in records.items()
    )
    names = [f.name for f in dataclasses.fields(FinetuneSettings) if f.name != "decoder"]
    p = sub.add_parser(
        "finetune",
        help=summary,
        description=FINETUNE_HELP.format(decoders=listing, settings=", ".join(names)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    q = tasks.add_parser(
        "seg",
        help="semantic segmentation",
        description=FINETUNE_HELP.format(decoders=listing, settings=", ".join(names)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--backbone", required=True, help="RUN_DIR, checkpoint, export, random:ARCH")
    q.add_argument("--decoder", default="linear", choices=list(records), help="default: linear")
    q.add_argument("--dataset", default="scenes", choices=dataset_names(), help="default: scenes")
    q.add_argument("--root", help="dataset folder (scenes: a `densessl scenes` folder)")
    q.add_argument("--out", required=True, help="run folder (same --out again = resume)")
    q.add_argument("--arch", help="architecture of a raw DINO checkpoint, e.g. vit_small")
    q.add_argument("--patch-size", type=positive, help="patch size with --arch (default 16)")
    q.add_argument("--which", default="teacher", choices=("teacher", "student"))
    add_format_option(q)
    q.add_argument("--weights", help="local weights file for --backbone timm:NAME")
    q.add_argument("--init-seed", type=int, default=0, help="seed of --backbone random:...")
    q.add_argument("--train-split", help="override the train split")
    q.add_argument("--val-split", default="val", help="the scored split (default val)")
    q.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.add_argument("overrides", nargs="*", help="key=value settings and data.* options")
    q.set_defaults(func=_cmd_finetune)
