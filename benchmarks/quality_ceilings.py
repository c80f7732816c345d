"""Protocol-fitting ceiling rows of the quality benchmark (see ``quality.py``): the loop.

The ``supervised`` row trains patch tokens on the masks, the ceiling of the dense columns but
not of two image-level ones: its CLS token is never trained (k-NN reads the CLS), and
class-level patch features cannot tell two places of one object apart (PCK asks exactly
that). Each row here trains the same tiny ViT with the same steps, batch, training scenes and
crop rule as ``supervised`` (:mod:`densessl.train.supervised`, whose settings it takes) on the
label its column measures, never on anything of the evaluation split; the task of each row
(its module, head, batch and loss) is in its own file, :data:`TASK_FILES`:
``supervised-image`` (k-NN's ceiling, ``quality_ceiling_image.py``) and ``supervised-match``
(PCK's ceiling, ``quality_ceiling_match.py``).

The loop is the supervised row's (:func:`densessl.train.supervised.run_resumable_loop`):
AdamW (no decay on biases and norms), linear warm-up and cosine decay
(:func:`densessl.ops.schedules.warmup_cosine`), autocast dtype from
:func:`densessl.train.precision.resolve_precision`. A task draws all randomness of a step from
a generator seeded by ``(seed, step)``, so the run resumes exactly from ``ceiling.pt``
(model, optimiser, step, history; written atomically every ``checkpoint_every_s`` seconds
and at the end). Only the backbone is evaluated; heads never touch the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import quality_ceiling_image
import quality_ceiling_match
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.train.precision import resolve_device, resolve_precision
from densessl.train.supervised import SupervisedConfig, run_resumable_loop

HERE = Path(__file__).resolve().parent
TASKS = {"supervised-image": quality_ceiling_image, "supervised-match": quality_ceiling_match}
CEILING_ROWS = tuple(TASKS)
#: The files that decide each row's numbers besides densessl (hashed into its cells' version).
TASK_FILES = {
    row: (HERE / "quality_ceilings.py", Path(task.__file__).resolve())
    for row, task in TASKS.items()
}
CHECKPOINT = "ceiling.pt"


def constants(row: str) -> dict[str, Any]:
    """The row's fixed constants (in its spec and its checkpoint's identity)."""
    return TASKS[row].constants()


def _identity(row: str, backbone: BackboneConfig, config: SupervisedConfig) -> str:
    settings = dataclasses.asdict(config)
    for key in ("device", "checkpoint_every_s", "log_every"):  # do not change the weights
        settings.pop(key)
    values = {"row": row, "backbone": dataclasses.asdict(backbone), "config": settings}
    return json.dumps({**values, **constants(row)}, sort_keys=True, default=str)


def train_ceiling(
    row: str,
    backbone_config: BackboneConfig,
    dataset: Any,
    config: SupervisedConfig,
    out: str | Path,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ViTBackbone, list[dict[str, Any]]]:
    """Train ``row`` on ``dataset`` (scenes' train split); resume from ``out`` when it holds a run.

    Returns:
        ``(backbone in eval mode, history)``; every ``log_every`` steps an entry with
        ``step``, ``loss``, ``accuracy`` (the task's training top-1), ``lr``, ``img_s``
        (crops per second; a match item is two crops) and the run's ``seconds`` so far.

    Raises:
        CheckpointError: ``out`` holds a checkpoint of a different configuration.
        NonFiniteLossError: the loss became NaN/inf (names the step).
    """
    if row not in TASKS:
        raise ValueError(f"row must be one of {CEILING_ROWS}, got {row!r}")
    task = TASKS[row]
    device = resolve_device(config.device)
    dtype, _ = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = task.build(build_backbone(backbone_config), dataset).to(device)

    def step_loss(step: int) -> tuple[torch.Tensor, Callable[[], dict[str, float]]]:
        loss, correct, counted = task.step_loss(model, dataset, config, step, device, dtype)
        return loss, lambda: {"accuracy": correct / max(counted, 1)}

    history = run_resumable_loop(
        model,
        step_loss,
        config,
        Path(out) / CHECKPOINT,
        _identity(row, backbone_config, config),
        row,
        crops_per_step=config.batch_size * task.CROPS_PER_ITEM,
        on_log=on_log,
    )
    return model.backbone.eval(), history
