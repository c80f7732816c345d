"""The run configuration's schema: one dataclass per section of a pretraining run.

A run is described by :class:`RunConfig`: the method name, one dataclass per component
(``backbone``, ``views``, ``data``, ``optim``, ``train``) and the method's own
hyper-parameter dataclass stored under the method's name (e.g. ``dino.out_dim``). How a
mapping becomes these dataclasses is :mod:`densessl.config.coerce`; presets and overrides
are merged in :mod:`densessl.config.presets`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from densessl.data.views.multicrop import ViewsConfig
from densessl.errors import ConfigError, brief
from densessl.models.vit import BackboneConfig


@dataclass
class DataConfig:
    """Where the training images come from.

    Attributes:
        path: ``"scenes"`` (synthetic scenes generated on the fly), a folder of images
            (searched recursively), or a folder written by ``densessl scenes``.
        scenes_num_images / scenes_size / scenes_seed / scenes_class_set: the on-the-fly
            scenes (``scenes_class_set``: ``"shared-cues"`` or ``"distinct-cues"``, see
            :class:`densessl.data.scenes.dataset.SceneConfig`).
        scenes_colours: how the scenes' colours are drawn, never from the class:
            ``"instance"`` (any colours), ``"palette"`` (eight shared colours) or ``"gray"``.
        scenes_objects: (fewest, most) objects per scene, drawn uniformly (0-12).
        scenes_radius: (smallest, largest) object radius as a fraction of the image side
            (0.03-0.4); the defaults give objects of ~4-25 % of the image each.
        batch_size: images per process and step (the global batch is this x processes).
        num_workers: data-loader worker processes (0 = load in the main process).
        on_corrupt: ``"skip"`` (count and warn) or ``"raise"`` for undecodable images.
        min_size: upscale images whose shorter side is smaller (0 = never).
    """

    path: str = "scenes"
    scenes_num_images: int = 2000
    scenes_size: int = 96
    scenes_seed: int = 0
    scenes_class_set: str = "shared-cues"
    scenes_colours: str = "instance"
    scenes_objects: tuple[int, int] = (1, 5)
    scenes_radius: tuple[float, float] = (0.12, 0.28)
    batch_size: int = 64
    num_workers: int = 2
    on_corrupt: str = "skip"
    min_size: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is empty; give a folder of images, or 'scenes'")
        _check_min("data", self, batch_size=1, num_workers=0, min_size=0)
        _check_min("data", self, scenes_num_images=1, scenes_size=1)
        if self.on_corrupt not in ("skip", "raise"):
            raise ValueError(
                f"data.on_corrupt must be 'skip' or 'raise', got {brief(self.on_corrupt)}"
            )


@dataclass
class OptimConfig:
    """Optimisation recipe (DINO's defaults).

    Attributes:
        epochs: training length in epochs (ignored when ``steps`` is set).
        steps: training length in optimiser steps; overrides ``epochs``.
        lr: base learning rate; the peak is ``lr * global_batch / 256`` when
            ``scale_lr_with_batch`` (DINO's linear scaling rule).
        min_lr: final learning rate of the cosine schedule.
        warmup_epochs: linear warm-up length (fractional epochs allowed).
        warmup_rule: ``"dino"`` (DINO's linspace: the peak at the last warm-up step, as
            DINO, SelfPatch and FLSL) or ``"linear"`` (``i / W``: the peak one step later, as
            optax / LOCA); see :func:`densessl.ops.schedules.warmup_cosine`.
        weight_decay / weight_decay_end: cosine weight-decay schedule (weights only; biases
            and norms get none).
        clip_grad: per-parameter gradient-norm clip as in the official DINO code (0 = off).
        freeze_last_layer: epochs during which parameters named ``last_layer`` get no update.
        momentum_teacher / momentum_teacher_end: cosine schedule of the teacher EMA.
        betas: AdamW betas.
    """

    epochs: int = 100
    steps: int | None = None
    lr: float = 5e-4
    scale_lr_with_batch: bool = True
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    warmup_rule: str = "dino"
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer: float = 1.0
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(
                f"optim.lr must be > 0, got {self.lr} (the base learning rate; the peak is "
                "lr x global batch / 256 when optim.scale_lr_with_batch)"
            )
        if self.warmup_rule not in ("dino", "linear"):
            raise ValueError(
                f"optim.warmup_rule must be 'dino' or 'linear', got {self.warmup_rule!r}"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"optim.steps must be >= 1 (or null to use epochs), got {self.steps}")
        _check_min("optim", self, epochs=1)
        _check_min("optim", self, min_lr=0, warmup_epochs=0, weight_decay=0)
        _check_min("optim", self, weight_decay_end=0, clip_grad=0, freeze_last_layer=0)
        for name in ("momentum_teacher", "momentum_teacher_end"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"optim.{name} must be in [0, 1], got {value}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")


@dataclass
class TrainConfig:
    """Loop, precision, logging and checkpoint settings.

    Attributes:
        seed: seeds model init, data order and augmentation.
        precision: ``auto`` (bf16 autocast on GPU; on CPU bf16 only where the chip has
            native bf16, else fp32), ``fp32``, ``bf16`` or ``fp16`` (GPU, with a grad scaler).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        log_every: steps between ``metrics.jsonl`` lines (host syncs happen only here).
        checkpoint_every: steps between writes of ``checkpoints/last.pt``.
        checkpoint_minutes: also write ``last.pt`` when this much time has passed.
        keep_every: also keep ``checkpoints/step_XXXXXXX.pt`` every N steps (0 = never).
        progress: show a progress bar (rank 0).
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` extra).
        compile: wrap the backbone with ``torch.compile`` (helps on GPU only).
    """

    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    keep_every: int = 0
    progress: bool = True
    tensorboard: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(
                "train.precision must be one of auto, fp32, bf16, fp16; "
                f"got {brief(self.precision)}"
            )
        _check_min("train", self, log_every=1, checkpoint_every=1, keep_every=0)
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"train.checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")


def _check_min(section: str, obj: Any, **minimum: float) -> None:
    """Raise ``ValueError`` naming ``section.key`` for the first value below its minimum."""
    for name, low in minimum.items():
        value = getattr(obj, name)
        if not value >= low:  # NaN too (dataclasses built in Python skip the coercion)
            raise ValueError(f"{section}.{name} must be >= {low}, got {value}")


@dataclass
class RunConfig:
    """Everything a pretraining run needs; ``params`` holds the method's dataclass."""

    method: str
    params: Any
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS: typing.ClassVar[tuple[str, ...]] = ("backbone", "views", "data", "optim", "train")

    def __post_init__(self) -> None:
        # Every method feeds whole crops to the ViT, whose patch grid needs sides that are
        # multiples of the patch size (the first forward pass would fail otherwise).
        patch = self.backbone.patch_size
        sizes = {"views.global_size": self.views.global_size}
        if self.views.num_local:
            sizes["views.local_size"] = self.views.local_size
        for key, size in sizes.items():
            if size % patch:
                low, high = (size // patch) * patch, (size // patch + 1) * patch
                fits = f"{low} or {high}" if low else str(high)
                raise ConfigError(
                    f"{key}={size} is not a multiple of backbone.patch_size={patch}: the ViT "
                    f"cuts crops into {patch}x{patch} patches; use e.g. {fits}"
                )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for name in self.SECTIONS:
            out[name] = to_plain(getattr(self, name))
        out[self.method] = to_plain(self.params)
        return out


def to_plain(value: Any) -> Any:
    """Dataclasses → dicts, tuples → lists (YAML- and JSON-friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


