"""The image-level and video columns of the quality benchmark (see ``quality.py``).

Each protocol of ``Budget.image_level`` runs on its synthetic counterpart, built by the data
registry for the protocol's kind (:mod:`densessl.data.registry`): ``knn`` on scenes labelled
by their dominant object, ``discovery`` (LOST CorLoc) on the scenes' exact object boxes,
``video`` (DAVIS-style label propagation, J&F) on short videos of moving scene objects and
``correspondence`` (SPair-style PCK@0.1) on view pairs with exact keypoints. Scene-level data
use the segmentation columns' ``eval_seed``, size and class set, so one trained backbone is
scored on the same rendered world. The headline of each column is the protocol's first
summary row (top-1, CorLoc, J&F-Mean, PCK), in percent.

``finetune`` (:func:`evaluate_finetuned`) fine-tunes a copy of the row's backbone end to end
with Segmenter's linear decoder on the held-out scenes' train split (``densessl finetune seg``,
its scenes recipe, ``Budget.finetune`` iterations) and scores val mIoU.

The label-painted oracle rows (``onehot-*``) are segmentation ceilings only and skip these
columns; the ``supervised`` row is their ceiling, ``random`` their floor.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

#: Scene-level kinds take the segmentation columns' scenes; the others their own generators
#: (with the scenes' colour mode, and for keypoint pairs their class set).
SCENE_LEVEL_KINDS = ("classification", "boxes")


def _dataset_options(kind: str, data: dict[str, Any], budget: Any) -> dict[str, Any]:
    """The column's dataset options: scene-level kinds draw the segmentation columns' scenes;
    videos take their colour mode, keypoint pairs their class set and colour mode."""
    options = {"seed": budget.eval_seed, "size": budget.scenes_size, **data}
    world = budget.scene_options()
    if kind in SCENE_LEVEL_KINDS:
        options.setdefault("num_images", budget.eval_scenes)
        for key, value in world.items():
            options.setdefault(key, value)
    elif kind == "video":
        options.setdefault("colours", world["colours"])
    elif kind == "keypoint_pairs":
        options.setdefault("class_set", world["class_set"])
        options.setdefault("colours", world["colours"])
    return options


def evaluate_image_level(extractor: Any, budget: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """``(results {protocol: headline %}, summary {protocol: rows})`` of every column."""
    from densessl.data.registry import build_dataset
    from densessl.evaluation.api import resolve_protocol
    from densessl.evaluation.registry import get_protocol
    from densessl.evaluation.report import jsonable

    results: dict[str, float] = {}
    summary: dict[str, Any] = {}
    for name, spec in budget.image_level.items():
        record = get_protocol(name)
        settings = resolve_protocol(name, "scenes", spec.get("settings", {}), budget.scenes_size)
        options = _dataset_options(record.kind, dict(spec.get("data", {})), budget)
        train_split, val_split = record.splits("scenes")
        train = None
        if train_split is not None:
            train = build_dataset("scenes", None, train_split, record.kind, **options)
        val = build_dataset("scenes", None, val_split, record.kind, **options)
        out = jsonable(record.run(extractor, train, val, settings, progress=False))
        rows = record.summarize(settings, out)
        results[name] = 100 * rows[0]["miou"]
        summary[name] = rows
    return results, summary


def evaluate_finetuned(extractor: Any, budget: Any) -> tuple[float, dict[str, Any]] | None:
    """``(val mIoU %, the fine-tuning record)`` of a copy of the row's backbone, or None when
    the row has no trainable backbone (label oracles, plain callables)."""
    from densessl.evaluation.finetune.api import finetune
    from densessl.models.vit import ViTBackbone

    backbone = getattr(extractor, "model", None)
    if not isinstance(backbone, ViTBackbone) or not budget.finetune:
        return None
    data = {
        "data.num_images": budget.eval_scenes,
        "data.seed": budget.eval_seed,
        "data.size": budget.scenes_size,
        **{f"data.{key}": value for key, value in budget.scene_options().items()},
    }
    with tempfile.TemporaryDirectory(prefix="quality-finetune-") as out:
        record = finetune(
            "seg", copy.deepcopy(backbone).train(), "scenes", out=out, decoder="linear",
            overrides={**data, **budget.finetune}, progress=False, verbose=False,
        )  # fmt: skip
    return 100 * record["results"]["miou"], record
