"""densessl: dense self-supervised pretraining of Vision Transformers and dense-feature evaluation.

The public API, by name (``densessl.pretrain(...)`` equals ``densessl pretrain ...``):

==========================  ==============================================================
``pretrain``                :func:`densessl.train.trainer.pretrain`
``evaluate``                :func:`densessl.evaluation.api.evaluate`
``finetune``                :func:`densessl.evaluation.finetune.api.finetune`
``visualize``               :func:`densessl.viz.panels.visualize`
``export_backbone``         :func:`densessl.export.export_backbone`
``build_backbone``          :func:`densessl.models.vit.build_backbone`
``load_backbone``           :func:`densessl.models.loading.load_backbone`
``ViTBackbone``             :class:`densessl.models.vit.ViTBackbone`
``SyntheticScenes``         :class:`densessl.data.scenes.dataset.SyntheticScenes`
``write_scenes``            :func:`densessl.data.scenes.dataset.write_scenes`
``ImageFolderDataset``      :class:`densessl.data.folder.ImageFolderDataset`
``MultiCropViews``          :class:`densessl.data.views.multicrop.MultiCropViews`
==========================  ==============================================================

These names resolve on first access (PEP 562), not at ``import densessl``: the package
imports nothing heavy, so ``densessl --help`` starts in ~0.05 s instead of the ~5.6 s that
importing torch, timm and scipy takes. This is the only lazy attribute in the package; every
module imports what it uses directly.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC_API = {
    "pretrain": "densessl.train.trainer",
    "evaluate": "densessl.evaluation.api",
    "finetune": "densessl.evaluation.finetune.api",
    "visualize": "densessl.viz.panels",
    "export_backbone": "densessl.export",
    "build_backbone": "densessl.models.vit",
    "load_backbone": "densessl.models.loading",
    "ViTBackbone": "densessl.models.vit",
    "SyntheticScenes": "densessl.data.scenes.dataset",
    "write_scenes": "densessl.data.scenes.dataset",
    "ImageFolderDataset": "densessl.data.folder",
    "MultiCropViews": "densessl.data.views.multicrop",
}

__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC_API:
        raise AttributeError(f"module 'densessl' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
