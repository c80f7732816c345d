"""The fine-tuning loop: exact resume, stop signals, mixed precision, progress.

``out/finetune.pt`` holds the model, optimiser (and fp16 grad-scaler) state, the step, the
history and an identity string (settings that change the weights + the backbone source +
the classes); it is written atomically every ``checkpoint_every`` iterations, at the end
and when SIGINT / SIGTERM arrives (then :class:`~densessl.train.signals.TrainingInterrupted`
is raised: the CLI exits 130 / 143, the same command resumes). Each step's data comes from
a generator seeded by ``(seed, step)`` (:mod:`densessl.evaluation.finetune.pipeline`) and the
global RNG (dropout, drop path) is reseeded with ``(seed, step)`` before the step, so a
resumed run equals an uninterrupted one. Another configuration's checkpoint is refused.

Under ``torchrun`` (a process group) each of the ``W`` processes builds its slice of every
global batch (``batch_size`` must divide by ``W``), the model is wrapped in DDP (BatchNorm
becomes SyncBatchNorm on CUDA, as SelfPatch's SyncBN), the loss is the sum over this
process's labelled pixels divided by the global count times ``W`` (so that DDP's gradient
mean is the one-process mean over the whole batch), stop signals are agreed every step and
only rank 0 writes the checkpoint.
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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from densessl.evaluation.finetune.model import SegmentationModel, param_groups
from densessl.evaluation.finetune.pipeline import StepBatches
from densessl.evaluation.finetune.settings import FinetuneSettings
from densessl.io.checkpoint import CheckpointError, load_file, save_atomic
from densessl.ops.distributed import (
    agree_any,
    all_reduce_sum,
    is_main_process,
    rank,
    world_size,
    wrap_ddp,
)
from densessl.ops.schedules import poly_lr
from densessl.train.numerics import NonFiniteLossError
from densessl.train.precision import autocast, resolve_precision
from densessl.train.signals import StopSignals, ignore_stop_signals

__all__ = ["CHECKPOINT", "train_segmenter"]

CHECKPOINT = "finetune.pt"
#: Settings that do not change the trained weights (free to differ on resume).
_FREE = ("checkpoint_every", "log_every", "num_workers", "eval_mode", "eval_window",
         "eval_stride", "eval_ratios", "eval_flip")  # fmt: skip


def identity(settings: FinetuneSettings, backbone: Any, num_classes: int) -> str:
    """What a checkpoint must match to be resumed."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _FREE}
    return json.dumps({"settings": values, "backbone": backbone, "classes": num_classes},
                      sort_keys=True, default=str)  # fmt: skip


def _optimizer(model: SegmentationModel, s: FinetuneSettings) -> torch.optim.Optimizer:
    groups = param_groups(model, s.lr, s.weight_decay, s.layer_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas)
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)


def _step_seed(seed: int, step: int) -> int:
    return (seed + 7) * 2_000_029 + step


def train_segmenter(
    model: SegmentationModel,
    train_set: Dataset,
    settings: FinetuneSettings,
    out: Path,
    source: Any,
    device: torch.device,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``settings.iterations``; resume from ``out/finetune.pt``.

    Args:
        model: backbone + decoder (moved to ``device`` here).
        train_set: items ``{"image": uint8 [3, H, W], "label": [H, W]}``.
        settings: the run's settings.
        out: run folder of the checkpoint.
        source: the backbone's source record (part of the identity).
        device: where to train.
        progress: tqdm bar.
        on_step: called after each finished step with its 1-based count (tests, hooks).

    Returns:
        ``{"history", "seconds", "resumed_from", "precision"}``.

    Raises:
        CheckpointError: ``out`` holds a checkpoint of another configuration.
        TrainingInterrupted: SIGINT / SIGTERM (after the checkpoint was written).
        NonFiniteLossError: the loss became NaN / inf.
    """
    s = settings
    num_classes = int(train_set.num_classes)  # type: ignore[attr-defined]
    ignore = int(getattr(train_set, "ignore_index", 255))
    dtype, use_scaler = resolve_precision(s.precision, device)
    world = world_size()
    if s.batch_size % world:
        raise ValueError(f"finetune.batch_size {s.batch_size} must divide by {world} processes")
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    optimizer = _optimizer(model, s)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ident = identity(s, source, num_classes)
    path = out / CHECKPOINT
    start, history, seconds = 0, [], 0.0
    if path.is_file():
        state = load_file(path)
        if not isinstance(state, dict) or state.get("identity") != ident:
            raise CheckpointError(
                f"{path} was written by a fine-tuning run with other settings, backbone or "
                "classes; use another --out (or the same settings to resume)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history, seconds = (
            int(state["step"]),
            list(state["history"]),
            float(state["seconds"]),
        )
    resumed = start

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "step": step, "history": history,
                 "seconds": seconds, "identity": ident}  # fmt: skip
        if is_main_process():
            save_atomic(state, path)
        if world > 1:
            torch.distributed.barrier()

    loader = DataLoader(
        StepBatches(train_set, s, start, (rank(), world)),
        batch_size=None, num_workers=s.num_workers,
        worker_init_fn=ignore_stop_signals if s.num_workers else None,
    )  # fmt: skip
    net = wrap_ddp(model, device)
    net.train()
    bar = tqdm(total=s.iterations, initial=start, desc=f"finetune {s.decoder}",
               disable=not progress or not is_main_process(), leave=False)  # fmt: skip
    done = start
    with StopSignals() as signals:
        for step, images, labels in loader:
            tick = time.perf_counter()
            lr = poly_lr(
                step, s.iterations, s.lr, s.min_lr, s.power, s.warmup_iters, s.warmup_ratio
            )
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            torch.manual_seed(_step_seed(s.seed, step) * 131 + rank())
            images, labels = images.to(device), labels.to(device)
            with autocast(device, dtype):
                logits = net(images)
            total = F.cross_entropy(logits.float(), labels, ignore_index=ignore, reduction="sum")
            count = all_reduce_sum((labels != ignore).sum().float())
            loss = total * world / count.clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seconds += time.perf_counter() - tick
            done = step + 1
            bar.update(1)
            if done % s.log_every == 0 or done == s.iterations:
                value = float(all_reduce_sum(loss.detach() / world))  # the global-batch loss
                if not math.isfinite(value):
                    raise NonFiniteLossError(f"finetune: loss is {value} at step {done}")
                history.append({"step": done, "loss": value, "lr": lr, "seconds": seconds})
                bar.set_postfix(loss=f"{value:.4f}")
            if on_step is not None:
                on_step(done)
            flags = agree_any(signals.flags(), device) if world > 1 else None
            stop = signals.agree(flags) and done < s.iterations
            if done % s.checkpoint_every == 0 or done == s.iterations or stop:
                save(done)
            if stop:
                bar.close()
                raise signals.interrupted(done, path, is_main_process())
    bar.close()
    if done == start and not path.is_file():
        save(done)
    return {"history": history, "seconds": seconds, "resumed_from": resumed,
            "precision": str(dtype).replace("torch.", "") if dtype else "fp32"}  # fmt: skip
