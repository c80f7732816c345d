"""The method interface and the registry.

A method is an ``nn.Module`` holding student, teacher, heads and loss state (centres,
queues). The trainer only talks to this interface; nothing else in the library knows a
method by name except the registry. Registering a method (``@register_method``) enrols it in
``densessl methods``, the CLI and the registry-wide smoke tests.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densessl.data.views.multicrop import MultiCropViews, ViewsConfig
from densessl.errors import ConfigError, brief
from densessl.models.vit import BackboneConfig, ViTBackbone


@dataclass
class StepInfo:
    """Where the run is: methods derive their own schedules (e.g. teacher temperature)."""

    step: int
    total_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> float:
        return self.step / max(self.steps_per_epoch, 1)


class Method(nn.Module, abc.ABC):
    """Base class of every pretraining method.

    Subclasses set the class attributes ``name``, ``description``, ``paper`` and ``Params``
    (the hyper-parameter dataclass) and implement :meth:`loss`, :meth:`teacher_backbone`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Params: ClassVar[type]
    # Backbone/views fields a method requires regardless of the preset (e.g. no CLS token).
    needs_cls_token: ClassVar[bool | None] = None

    def __init__(self, params: Any, backbone: BackboneConfig, views: ViewsConfig) -> None:
        super().__init__()
        self.params = params
        self.backbone_config = backbone
        self.views_config = views

    @classmethod
    def presets_dir(cls) -> Path:
        """``presets/`` beside the module defining the method (its shipped YAML presets)."""
        return Path(inspect.getfile(cls)).resolve().parent / "presets"

    @classmethod
    def build_views(cls, views: ViewsConfig) -> MultiCropViews:
        """The multi-crop sampler of this method's training images.

        The default draws the crops ``views`` describes; a method with a crop rule of its
        own returns a :class:`~densessl.data.views.multicrop.MultiCropViews` subclass kept
        in its own package.
        """
        return MultiCropViews(views)

    # -- the contract -------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        """Compute the training loss; ``"loss"`` is the total, other entries are logged."""

    @abc.abstractmethod
    def teacher_backbone(self) -> ViTBackbone:
        """The backbone that is evaluated and exported (the EMA teacher's)."""

    @abc.abstractmethod
    def student_backbone(self) -> ViTBackbone:
        """The student's backbone (warm starts load weights into both)."""

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs updated by :meth:`update_teacher`."""
        return []

    def lr_scale(self, parameter_name: str) -> float:
        """Per-parameter learning-rate multiplier (e.g. Leopart's heads get 10x)."""
        return 1.0

    def rank_local_buffers(self) -> list[str]:
        """Names of buffers that differ between processes by design (Leopart's queue shards).

        The trainer gathers them from every process into the checkpoint and gives each
        process its own part back on resume; every other buffer is the same everywhere.
        """
        return []

    def after_step(self, batch: dict[str, Any], info: StepInfo) -> None:
        """Called after the optimiser step and the EMA (queues, bookkeeping)."""

    # -- shared behaviour ---------------------------------------------------------------
    def forward(self, batch: dict[str, Any], info: StepInfo) -> dict[str, Tensor]:
        return self.loss(batch, info)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for module_name, module in self.named_children():
            if module_name.startswith("teacher"):
                continue
            for name, param in module.named_parameters(prefix=module_name):
                if param.requires_grad:
                    yield name, param

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no weight decay on biases and 1-d parameters (norms), as DINO.

        Each group carries ``lr_scale`` and ``apply_wd`` for the trainer's schedules.
        """
        groups: dict[tuple[bool, float], dict[str, Any]] = {}
        for name, param in self.trainable_parameters():
            decay = not (name.endswith(".bias") or param.ndim <= 1)
            scale = self.lr_scale(name)
            group = groups.setdefault(
                (decay, scale),
                {
                    "params": [],
                    "names": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "apply_wd": decay,
                    "lr_scale": scale,
                },
            )
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: ``teacher = m * teacher + (1 - m) * student`` for every pair."""
        for student, teacher in self.ema_pairs():
            s_params = list(student.parameters())
            t_params = list(teacher.parameters())
            if len(s_params) != len(t_params):
                raise RuntimeError("student and teacher modules have different parameters")
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1 - momentum)


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_methods() -> None:
    """Import every method package of ``densessl.methods`` (its ``method`` module registers it).

    Called on first use, not at import, so ``import densessl`` has no side effects; adding a
    method is adding its package (``methods/<name>/method.py``), nothing else changes.
    """
    import importlib
    import pkgutil

    import densessl.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg and not module.name.startswith("_"):
            importlib.import_module(f"densessl.methods.{module.name}.method")


def get_method(name: str) -> type[Method]:
    """The registered method class ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones; the CLI prints it
            as ``densessl: error: ...``, exit 2).
    """
    _load_builtin_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(
            f"unknown method {brief(name)} (--method / method); registered methods: "
            f"{', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def list_methods() -> dict[str, type[Method]]:
    """All registered methods by name."""
    _load_builtin_methods()
    return dict(sorted(_REGISTRY.items()))


MethodFactory = Callable[[Any, BackboneConfig, ViewsConfig], Method]
