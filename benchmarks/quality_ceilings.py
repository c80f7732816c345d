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

The loop is the supervised row's: AdamW (no decay on biases and norms), linear warm-up and
cosine decay (:func:`densessl.ops.schedules.warmup_cosine`), autocast dtype from
:func:`densessl.train.precision.resolve_precision`. A task draws all randomness of a step from
a generator seeded by ``(seed, step)``, so the run resumes exactly from ``ceiling.pt``
(model, optimiser, step, history; written atomically every ``checkpoint_every_s`` seconds
and at the end). Only the backbone is evaluated; heads never touch the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quality_ceiling_image
import quality_ceiling_match
from densessl.io.checkpoint import CheckpointError, load_file, save_atomic
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.schedules import warmup_cosine
from densessl.train.numerics import NonFiniteLossError
from densessl.train.precision import resolve_device, resolve_precision
from densessl.train.supervised import SupervisedConfig

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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


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
    out = Path(out)
    device = resolve_device(config.device)
    dtype, _ = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = task.build(build_backbone(backbone_config), dataset).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    identity = _identity(row, backbone_config, config)
    start, history, seconds = 0, [], 0.0
    path = out / CHECKPOINT
    if path.is_file():
        state = load_file(path)
        if state.get("config") != identity:
            raise CheckpointError(f"{path} was written for a different {row} configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        seconds = float(state["seconds"])

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        out.mkdir(parents=True, exist_ok=True)
        save_atomic({**state, "history": history, "seconds": seconds, "config": identity}, path)

    model.train()
    last_save = time.perf_counter()
    window_start, window_crops = time.perf_counter(), 0
    for step in range(start, config.steps):
        tick = time.perf_counter()
        lr = warmup_cosine(
            step, config.steps, config.lr, config.min_lr, config.warmup_steps, rule="linear"
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, correct, counted = task.step_loss(model, dataset, config, step, device, dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - tick
        window_crops += config.batch_size * task.CROPS_PER_ITEM
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{row} training: loss is {value} at step {done}")
            speed = window_crops / max(time.perf_counter() - window_start, 1e-9)
            entry = {"step": done, "loss": value, "accuracy": correct / max(counted, 1), "lr": lr}
            history.append({**entry, "img_s": speed, "seconds": seconds})
            window_start, window_crops = time.perf_counter(), 0
            if on_log is not None:
                on_log(history[-1])
        if time.perf_counter() - last_save >= config.checkpoint_every_s or done == config.steps:
            save(done)
            last_save = time.perf_counter()
    return model.backbone.eval(), history
