"""``densessl eval PROTOCOL``: the parser built from the protocol registry, and the command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from densessl.cli.help_text import EVAL_HELP
from densessl.cli.options import add_format_option, positive

__all__ = ["add_eval_parser", "cmd_eval"]


def cmd_eval(args: argparse.Namespace) -> int:
    from densessl.evaluation.api import evaluate
    from densessl.io.paths import user_path

    out = args.out
    backbone = user_path(args.backbone)
    if out is None and backbone.is_dir() and (backbone / "config.yaml").is_file():
        out = backbone / "eval" / f"{args.protocol_name}_{args.dataset}.json"
    record = evaluate(
        args.protocol,
        backbone=args.backbone,
        dataset=args.dataset,
        root=args.root,
        out=out,
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
    if out is None:
        print("(no --out given: the JSON result was not written)")
    return 0 if record else 1


def _eval_options(datasets: Sequence[str], kind: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backbone", required=True, help="RUN_DIR, checkpoint, export, timm:NAME or random:..."
    )
    common.add_argument(
        "--dataset",
        default="scenes",
        choices=datasets,
        help=f"{kind} dataset layout (default: synthetic scenes rendered on the fly)",
    )
    common.add_argument("--root", help="dataset folder (scenes: a `densessl scenes` folder)")
    common.add_argument("--out", help="write the result JSON here")
    common.add_argument("--arch", help="architecture of a raw DINO checkpoint, e.g. vit_small")
    common.add_argument("--patch-size", type=positive, help="patch size with --arch (default 16)")
    common.add_argument("--which", default="teacher", choices=("teacher", "student"))
    add_format_option(common)
    common.add_argument("--weights", help="local weights file for --backbone timm:NAME")
    common.add_argument("--init-seed", type=int, default=0, help="seed of --backbone random:...")
    common.add_argument("--train-split", help="override the protocol's train split")
    common.add_argument("--val-split", help="override the scored split")
    common.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("overrides", nargs="*", help="key=value settings and data.* options")
    return common


def add_eval_parser(sub: argparse._SubParsersAction, with_protocols: bool) -> None:
    """``densessl eval PROTOCOL``; the protocols come from the registry.

    The registry imports the protocols (and torch), so it is read only when the command is
    ``eval``: every other command, and ``densessl --help``, starts without it.
    """
    summary = "evaluate a backbone's frozen patch features with a registered protocol"
    if not with_protocols:
        p = sub.add_parser("eval", help=summary, add_help=False)
        p.set_defaults(func=None)
        return
    from densessl.evaluation.registry import list_protocols

    records = list_protocols()
    listing = "\n".join(f"  {name:<13} {r.description}" for name, r in records.items())
    p = sub.add_parser(
        "eval",
        help=summary,
        description=EVAL_HELP.format(protocols=listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    protocols = p.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for name, record in records.items():
        common = _eval_options(record.datasets, record.kind)
        q = protocols.add_parser(
            name,
            aliases=list(record.aliases),
            help=record.description,
            parents=[common],
            description=f"{record.description}. {record.help} Follows {record.source}. "
            f"Settings (key=value, after the options): {', '.join(record.setting_names())}. "
            "Defaults: the paper's on real datasets, the for_scenes CPU preset on scenes; "
            "both are in the JSON result.",
        )
        q.set_defaults(func=cmd_eval, protocol_name=name)
