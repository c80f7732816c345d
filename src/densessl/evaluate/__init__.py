"""Dense-feature evaluation on frozen patch features.

``densessl.evaluate(protocol, backbone=..., dataset=...)`` runs one protocol end to end (this
package is callable: calling it calls :func:`densessl.evaluate.api.evaluate`); the CLI is
``densessl eval linear|cluster|retrieval|unsupervised``.

Every evaluator takes a *feature extractor*: any callable
``extractor(images[B, 3, H, W]) -> patches[B, h, w, D]`` (ImageNet-normalised float images,
row-major patch grid) with a ``patch_size`` attribute. Evaluators never import a method, so
they measure our checkpoints, timm models or official weights the same way.

Modules (import them directly; this package imports nothing heavy):

* :mod:`densessl.evaluate.api`: :func:`~densessl.evaluate.api.evaluate`, presets and splits.
* :mod:`densessl.evaluate.features`: frozen extractors from runs, checkpoints, exports, timm
  models, official DINO weights, or random init.
* :mod:`densessl.evaluate.miou`: dataset-level confusion matrix, mIoU, Hungarian and
  many-to-one matching (Leopart conventions).
* :mod:`densessl.evaluate.kmeans`: seeded, chunked k-means in torch (faiss optional),
  standardisation and PCA.
* :mod:`densessl.evaluate.preprocess`: resizing, ImageNet normalisation, collate, and
  feature extraction shared by the evaluators.
* :mod:`densessl.evaluate.linear` (+ ``linear_heads``): Leopart's linear / FCN probe.
* :mod:`densessl.evaluate.overcluster`: Leopart's overclustering protocol.
* :mod:`densessl.evaluate.retrieval`: Hummingbird dense nearest-neighbour retrieval.
* :mod:`densessl.evaluate.unsupervised` (+ ``unsupervised_protocol``, ``unsupervised_cd``):
  Leopart's fully-unsupervised segmentation, built from :mod:`~densessl.evaluate.attention_fg`
  (features with CLS attention), :mod:`~densessl.evaluate.cbfe` (cluster-based foreground
  extraction) and :mod:`~densessl.evaluate.community` (co-occurrence graph, Infomap/Leiden).
* :mod:`densessl.evaluate.report`: result rows and the printed table.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_LAZY = {
    "evaluate": "densessl.evaluate.api",
    "build_extractor": "densessl.evaluate.features",
    "PatchFeatureExtractor": "densessl.evaluate.features",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``densessl.evaluate`` is both this package and the function of the public API."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from densessl.evaluate.api import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
