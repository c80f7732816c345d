"""densessl: dense self-supervised pretraining of Vision Transformers and dense-feature evaluation.

The public API is imported lazily so that ``import densessl`` stays cheap and has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "evaluate": "densessl.evaluate",
    "build_backbone": "densessl.backbone",
    "load_backbone": "densessl.backbone",
    "ViTBackbone": "densessl.backbone",
    "SyntheticScenes": "densessl.data.scenes",
    "write_scenes": "densessl.data.scenes",
    "ImageFolderDataset": "densessl.data.folder",
    "MultiCropViews": "densessl.views",
    "visualize": "densessl.viz",
    "export_backbone": "densessl.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "evaluate":  # the package is callable: densessl.evaluate(...) runs the API
        return import_module(_LAZY[name])
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'densessl' has no attribute {name!r}")
