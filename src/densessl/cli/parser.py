"""The ``densessl`` parser, one sub-command per API call, and :func:`main`, which runs one."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from densessl.cli.errors import run_command
from densessl.cli.eval_command import add_eval_parser
from densessl.cli.help_text import EXPORT_HELP, PRETRAIN_HELP, VIZ_HELP
from densessl.cli.options import add_format_option, positive
from densessl.evaluation.finetune.cli import add_finetune_parser


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from densessl.train.trainer import pretrain

    start = time.perf_counter()
    run = pretrain(
        method=args.method,
        data=args.data,
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        epochs=args.epochs,
        init=args.init,
        overrides=args.overrides,
        allow_nonempty=args.allow_nonempty,
    )
    print(f"run directory: {run} ({time.perf_counter() - start:.0f} s)")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from densessl.config.presets import list_presets
    from densessl.methods.base import list_methods

    methods = list_methods()
    width = max(len(name) for name in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.description}")
        print(f"{'':<{width}}  paper: {cls.paper}")
        print(f"{'':<{width}}  presets: {', '.join(list_presets(name))}")
    return 0


def _cmd_scenes(args: argparse.Namespace) -> int:
    from densessl.data.scenes.dataset import check_scene_options as check
    from densessl.data.scenes.dataset import format_statistics, scene_statistics, write_scenes
    from densessl.errors import ConfigError

    keys = ("num_images", "size", "seed", "class_set", "colours")
    opts = {k: f"--{k.replace('_', '-')}" for k in keys}
    config = check(
        args.num_images, args.size, args.seed, args.class_set, names=opts, colours=args.colours
    )
    try:
        out = write_scenes(args.out, args.num_images, args.size, args.seed, config=config)
    except (FileExistsError, NotADirectoryError) as err:  # a file, a folder of other files
        raise ConfigError(f"--out: {err}") from None
    print(f"wrote {args.num_images} scenes ({args.size} px, seed {args.seed}) to {out}")
    print(format_statistics(scene_statistics(out)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from densessl.demo import run_demo

    init = None if args.init.lower() == "none" else args.init
    run_demo(
        Path(args.out), steps=args.steps, method=args.method, init=init, precision=args.precision
    )
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from densessl.io.decode import ImageDecodeError
    from densessl.viz.panels import visualize

    start = time.perf_counter()
    try:
        paths = visualize(
            args.backbone,
            args.images,
            args.out,
            size=args.size,
            clusters=args.clusters,
            mask_background=args.mask_background,
            threshold=args.threshold,
            attention=not args.no_attention,
            max_images=args.max_images or None,
            which=args.which,
            arch=args.arch,
            patch_size=args.patch_size,
            weights=args.weights,
            device=args.device,
            progress=not args.no_progress,
        )
    except (ImageDecodeError, ValueError) as err:
        print(f"densessl: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} panels to {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from densessl.export import export_backbone, export_detection

    if args.to != "timm":
        out = export_detection(args.run, args.out, args.to, which=args.which)
        recipe = json.loads((out / "detection.json").read_text())
        print(f"exported {recipe['keys']} {args.to} backbone tensors to {out / (args.to + '.pth')}")
        print("config overrides:\n  " + "\n  ".join(recipe["overrides"]))
        return 0
    out = export_backbone(args.run, args.out, which=args.which, verify=not args.no_verify)
    meta = json.loads((out / "meta.json").read_text())
    check = meta.get("verified_max_abs_diff")
    checked = f"; plain timm matches (max |diff| {check:.1e})" if check is not None else ""
    print(
        f"exported {meta['architecture']} {meta['timm_kwargs']} "
        f"({meta['method']}, step {meta['step']}) to {out}{checked}"
    )
    return 0


def build_parser(
    with_protocols: bool = True, with_decoders: bool = True
) -> argparse.ArgumentParser:
    """The argument parser; ``with_protocols=False`` / ``with_decoders=False`` leave the
    protocol / decoder registries unread (see :func:`densessl.cli.eval_command.add_eval_parser`)."""
    parser = argparse.ArgumentParser(
        prog="densessl",
        description="Dense self-supervised pretraining of ViTs and dense-feature evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks (or DENSESSL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone",
        description=PRETRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", default="dino", help="registered method (see `densessl methods`)")
    p.add_argument(
        "--data", default=None, help="folder of images, or 'scenes' (default: generated scenes)"
    )
    p.add_argument(
        "--preset",
        default="tiny",
        help="a preset shipped with the method (tiny, paper) or a YAML file's path",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run directory: a new or empty folder, or a densessl run (same --out again = resume)",
    )
    p.add_argument(
        "--allow-nonempty",
        action="store_true",
        help="start a run in a non-empty folder that is not a densessl run; its files are "
        "never overwritten or deleted (a file named like one the run writes is refused)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="training length in steps")
    length.add_argument("--epochs", type=int, default=None, help="training length in epochs")
    p.add_argument(
        "--init",
        default=None,
        help="warm-start backbone weights: a densessl run/checkpoint or an official DINO .pth",
    )
    add_format_option(p)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_cmd_pretrain)

    add_eval_parser(sub, with_protocols)
    add_finetune_parser(sub, with_decoders)

    p = sub.add_parser(
        "viz",
        help="picture the patch features: PCA colours, clusters, attention",
        description=VIZ_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone", required=True, help="RUN_DIR, checkpoint, export, timm:NAME ...")
    p.add_argument("--images", required=True, nargs="+", help="a folder and/or image files")
    p.add_argument("--out", required=True, help="output folder for the PNG panels")
    p.add_argument("--size", type=int, default=224, help="shorter image side in pixels")
    p.add_argument("--clusters", type=int, default=6, help="k of the joint k-means")
    p.add_argument(
        "--mask-background", action="store_true", help="black out background (first PCA axis)"
    )
    p.add_argument("--threshold", type=float, default=0.0, help="foreground cut (std units)")
    p.add_argument("--no-attention", action="store_true", help="leave out the attention maps")
    p.add_argument("--max-images", type=int, default=16, help="use the first N images (0: all)")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    add_format_option(p)
    p.add_argument("--arch", help="architecture of a raw DINO checkpoint, e.g. vit_small")
    p.add_argument("--patch-size", type=positive, help="patch size with --arch (default 16)")
    p.add_argument("--weights", help="local weights file for --backbone timm:NAME")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_viz)

    p = sub.add_parser(
        "export",
        help="export a run's backbone as timm safetensors + meta.json",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run",
        help="run directory, or a densessl / DINO / SelfPatch / Leopart / LOCA / FLSL / NeCo file",
    )
    p.add_argument(
        "--out", required=True, help="export folder (an earlier export in it is replaced)"
    )
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    add_format_option(p)
    p.add_argument(
        "--to",
        default="timm",
        choices=("timm", "detectron2", "mmdet"),
        help="timm (default); detectron2: ViTDet backbone.net.* keys; mmdet: the SelfPatch / "
        "FLSL Mask R-CNN backbone.* keys (README: detection hand-off)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the plain-timm feature check")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("scenes", help="write synthetic scenes with exact dense labels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--size", type=int, default=96, help="image side in pixels (64-512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--class-set",
        default="shared-cues",
        help="thing classes: 'shared-cues' (default) or 'distinct-cues' (own shape + texture)",
    )
    p.add_argument(
        "--colours",
        default="instance",
        help="'instance' (default: any colours), 'palette' (eight shared colours) or 'gray'",
    )
    p.set_defaults(func=_cmd_scenes)

    p = sub.add_parser("demo", help="the end-to-end demo on synthetic scenes")
    p.add_argument("--out", default="runs/demo", help="demo output folder")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (150 from a base, else preset)",
    )
    p.add_argument(
        "--init",
        default="densessl:miniature-base",
        help="backbone to post-train (default: the shipped DINO base); 'none' = from scratch",
    )
    p.add_argument(
        "--method", default="leopart", help="method whose tiny preset is trained (default leopart)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="training precision: auto (default; bf16 only where the CPU runs it natively), "
        "fp32 (as an AVX2-only CPU runs it) or bf16",
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(with_protocols=command == "eval", with_decoders=command == "finetune")
    args = parser.parse_args(words)
    from densessl.models.formats.choice import use_format

    with use_format(getattr(args, "format", None)):  # --format: every loader reads it
        return run_command(args.func, args)  # user errors: one line, exit 2 (see cli.errors)


if __name__ == "__main__":
    raise SystemExit(main())
