"""Supervised reference: the same ViT trained directly on dense labels.

The ceiling of the quality benchmark: a backbone trained end to end on the segmentation
masks with the same budget (steps, batch, crop size) as the self-supervised runs. A linear
1x1 head scores every patch token; its logits are upsampled bilinearly to the crop and
trained with pixel-wise cross-entropy (``ignore_index`` pixels skipped). After training only
the backbone is kept; it is evaluated like any other backbone (a fresh linear probe, k-means,
retrieval), so the head never touches the evaluation.

Crops are RandomResizedCrop boxes (``crop_scale``, aspect ratio 3/4..4/3) of the image and its
label map, resized to ``crop_size`` (bilinear / nearest) and flipped with probability 0.5.
All randomness of a step (which images, which boxes, which flips) comes from a generator
seeded with ``(seed, step)``, so a run resumed from its checkpoint continues exactly, without
storing RNG states. AdamW with linear warm-up and cosine decay; autocast dtype from
:func:`densessl.train.precision.resolve_precision` (bf16 only where the CPU has it natively).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.evaluation.preprocess import normalize, resize_image, resize_label, sample_crop_box
from densessl.io.checkpoint import CheckpointError, load_file, save_atomic
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.schedules import warmup_cosine
from densessl.train.numerics import NonFiniteLossError
from densessl.train.precision import autocast, resolve_device, resolve_precision

__all__ = ["SupervisedConfig", "train_supervised"]

CHECKPOINT = "supervised.pt"


@dataclass(frozen=True)
class SupervisedConfig:
    """Settings of a supervised reference run.

    Attributes:
        steps: optimiser steps.
        batch_size: crops per step.
        crop_size: side of the square training crops (pixels; a multiple of the patch size).
        crop_scale: RandomResizedCrop area fraction range.
        lr / min_lr: AdamW peak learning rate and the cosine floor.
        warmup_steps: linear warm-up length.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        seed: backbone init, head init and data sampling.
        precision: ``auto`` / ``fp32`` / ``bf16`` (see :mod:`densessl.train.precision`).
        device: ``auto`` (CUDA when present) or a torch device name.
        checkpoint_every_s: wall-clock seconds between checkpoints (and at the end).
        log_every: steps between entries of the returned history.
    """

    steps: int = 1000
    batch_size: int = 32
    crop_size: int = 64
    crop_scale: tuple[float, float] = (0.4, 1.0)
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.05
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every_s: float = 300.0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"supervised.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(
                f"supervised.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if self.lr <= 0:
            raise ValueError(f"supervised.lr must be > 0, got {self.lr}")


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1) * 1_000_003 + step)


def sample_batch(dataset: Any, config: SupervisedConfig, step: int) -> tuple[Tensor, Tensor]:
    """The crops of ``step``: ``images [B, 3, S, S]`` (normalised), ``labels [B, S, S]`` (long)."""
    gen = _step_generator(config.seed, step)
    indices = torch.randint(0, len(dataset), (config.batch_size,), generator=gen).tolist()
    images, labels = [], []
    for index in indices:
        item = dataset[index]
        image, label = item["image"], torch.as_tensor(item["label"])
        top, left, h, w = sample_crop_box(*label.shape[-2:], config.crop_scale, (3 / 4, 4 / 3), gen)
        image = resize_image(image[:, top : top + h, left : left + w], config.crop_size)
        label = resize_label(label[top : top + h, left : left + w], config.crop_size)
        if bool(torch.rand((), generator=gen) < 0.5):
            image, label = image.flip(-1), label.flip(-1)
        images.append(normalize(image))
        labels.append(label.long())
    return torch.stack(images), torch.stack(labels)


class _Segmenter(nn.Module):
    def __init__(self, backbone: ViTBackbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.config.resolved_embed_dim
        self.head = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        patches = self.backbone.tokens(images)[1]  # [B, h, w, D]
        logits = self.head(patches.permute(0, 3, 1, 2))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _config_json(backbone: BackboneConfig, config: SupervisedConfig, num_classes: int) -> str:
    values = {
        "backbone": dataclasses.asdict(backbone),
        "supervised": dataclasses.asdict(config),
        "num_classes": num_classes,
    }
    for key in ("device", "checkpoint_every_s", "log_every"):  # do not change the weights
        values["supervised"].pop(key)
    return json.dumps(values, sort_keys=True, default=str)


def train_supervised(
    backbone_config: BackboneConfig,
    dataset: Any,
    num_classes: int,
    config: SupervisedConfig,
    out: str | Path,
    *,
    ignore_index: int = 255,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ViTBackbone, list[dict[str, Any]]]:
    """Train ``backbone_config`` on ``dataset``'s masks; resume from ``out`` when it holds a run.

    Args:
        backbone_config: the ViT to build (initialised with ``config.seed``).
        dataset: items ``{"image": uint8 [3, H, W], "label": [H, W]}`` (e.g. scenes' train split).
        num_classes: label values ``0 .. num_classes - 1``; ``ignore_index`` is skipped.
        config: the run's settings.
        out: folder for ``supervised.pt`` (written atomically every ``checkpoint_every_s``).
        on_log: called with each history entry (step, loss, lr, img_s).

    Returns:
        ``(backbone in eval mode, history)``; history entries hold ``step``, ``loss``,
        ``pixel_accuracy``, ``lr``, ``img_s`` and the run's ``seconds`` so far.

    Raises:
        CheckpointError: ``out`` holds a checkpoint of a different configuration.
        NonFiniteLossError: the loss became NaN/inf (names the step).
    """
    device = resolve_device(config.device)
    dtype, _ = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = _Segmenter(build_backbone(backbone_config), num_classes).to(device)
    identity = _config_json(backbone_config, config, num_classes)

    def step_loss(step: int) -> tuple[Tensor, Callable[[], dict[str, float]]]:
        images, labels = sample_batch(dataset, config, step)
        images, labels = images.to(device), labels.to(device)
        with autocast(device, dtype):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)

        def metrics() -> dict[str, float]:  # only at logged steps (a host sync)
            valid = labels != ignore_index
            correct = (logits.argmax(1) == labels) & valid
            return {"pixel_accuracy": float(correct.sum()) / max(int(valid.sum()), 1)}

        return loss, metrics

    history = run_resumable_loop(
        model, step_loss, config, Path(out) / CHECKPOINT, identity, "supervised", on_log=on_log
    )
    return model.backbone.eval(), history


def run_resumable_loop(
    model: nn.Module,
    step_loss: Callable[[int], tuple[Tensor, Callable[[], dict[str, float]]]],
    config: SupervisedConfig,
    path: Path,
    identity: str,
    what: str,
    *,
    crops_per_step: int | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """AdamW with linear warm-up and cosine decay over ``config.steps``, resumable from ``path``.

    ``step_loss(step)`` returns the step's loss and a callable giving the metrics to log
    (called only every ``log_every`` steps). ``path`` holds model, optimiser, step, history,
    wall time and ``identity``; a file of another identity is refused (``what`` names the run
    in the error). Every ``log_every`` steps a history entry gets ``step``, ``loss``, the
    metrics, ``lr``, ``img_s`` (``crops_per_step``, default ``batch_size``, per second) and the
    run's ``seconds``; the file is rewritten every ``checkpoint_every_s`` and at the end.
    """
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    start, history, seconds = 0, [], 0.0
    if path.is_file():
        state = load_file(path)
        if state.get("config") != identity:
            raise CheckpointError(f"{path} was written for a different {what} configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        seconds = float(state["seconds"])

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({**state, "history": history, "seconds": seconds, "config": identity}, path)

    crops = crops_per_step or config.batch_size
    model.train()
    last_save = time.perf_counter()
    window_start, window_crops = time.perf_counter(), 0
    for step in range(start, config.steps):
        tick = time.perf_counter()
        lr = warmup_cosine(  # the supervised row's own recipe: i / W (unchanged)
            step, config.steps, config.lr, config.min_lr, config.warmup_steps, rule="linear"
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, metrics = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - tick
        window_crops += crops
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{what} training: loss is {value} at step {done}")
            speed = window_crops / max(time.perf_counter() - window_start, 1e-9)
            entry = {"step": done, "loss": value, **metrics(), "lr": lr}
            history.append({**entry, "img_s": speed, "seconds": seconds})
            window_start, window_crops = time.perf_counter(), 0
            if on_log is not None:
                on_log(history[-1])
        if time.perf_counter() - last_save >= config.checkpoint_every_s or done == config.steps:
            save(done)
            last_save = time.perf_counter()
    return history
