"""Training and evaluation of one cell of the quality benchmark (see ``quality.py``).

``train_row`` builds (or, with ``dry=True``, only describes) the backbone of a row:
``onehot-pixel`` / ``onehot-patch`` (labels as features, no training), ``random`` (the
shared tiny ViT at its seeded init), ``supervised`` (:mod:`densessl.train.supervised`), the
protocol-fitting ceilings ``supervised-image`` / ``supervised-match``
(``quality_ceilings.py``, the supervised row's settings) or a registered method (its
``tiny`` preset plus the budget's shared overrides, through the trainer, which resumes from
the cell's checkpoints). ``evaluate_backbone`` runs the scenes
presets of the linear probe, overclustering and retrieval on the held-out scenes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from quality_ceilings import CEILING_ROWS, constants, train_ceiling

PICTURE_INDEX = 0  # the fixed held-out image (index into the eval val split) of the pictures


def hardware() -> dict[str, Any]:
    """Where a cell ran: CPU model, threads, device, autocast dtype, library versions."""
    import densessl
    from densessl.train.precision import resolve_device, resolve_precision

    device = resolve_device("auto")
    dtype, _ = resolve_precision("auto", device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "torch": torch.__version__,
        "densessl": densessl.__version__,
    }


def eval_datasets(budget: Any) -> dict[str, Any]:
    from densessl.data.scenes.dataset import SyntheticScenes

    common = {
        "num_images": budget.eval_scenes,
        "size": budget.scenes_size,
        "seed": budget.eval_seed,
        **budget.scene_options(),
    }
    return {
        "train": SyntheticScenes(split="train", **common),
        "val": SyntheticScenes(split="val", **common),
    }


def _method_config(row: str, seed: int, budget: Any) -> Any:
    from densessl.config.presets import build_run_config
    from densessl.methods.base import get_method

    return build_run_config(row, get_method(row).Params, "tiny", budget.shared_overrides(seed))


def _eval_spec(budget: Any) -> dict[str, Any]:
    keys = ("eval_scenes", "eval_seed", "scenes_size", "scenes_class_set")
    keys += ("scenes_colours", "scenes_objects", "scenes_radius")
    keys += ("linear", "cluster", "retrieval", "image_level", "finetune")
    return {k: getattr(budget, k) for k in keys}


def _training_from_metrics(run: Path, batch_size: int) -> dict[str, Any]:
    from densessl.train.trainer import read_metrics

    records = read_metrics(run)
    seconds, previous = 0.0, 0
    for record in records:  # time per logged window = images in it / img/s
        if record.get("img_s"):
            seconds += (record["step"] - previous) * batch_size / record["img_s"]
        previous = record["step"]
    return {
        "steps": records[-1]["step"] if records else 0,
        "first_loss": records[0]["loss"] if records else None,
        "final_loss": records[-1]["loss"] if records else None,
        "train_seconds": seconds,
        "img_s": records[-1].get("img_s") if records else None,
        "last_metrics": records[-1] if records else {},
    }


def train_row(
    row: str, seed: int, budget: Any, folder: Path | None = None, dry: bool = False
) -> dict[str, Any]:
    """``{"spec", "extractor", "eval_datasets", "training"}`` of a row (only ``spec`` if dry)."""
    from densessl.evaluation.report import jsonable

    spec: dict[str, Any] = {"row": row, "seed": seed, "eval": _eval_spec(budget)}
    dino = _method_config("dino", seed, budget)  # the shared backbone of the reference rows
    if row.startswith("onehot"):
        spec["patch_size"] = 1 if row == "onehot-pixel" else dino.backbone.patch_size
    elif row == "random":
        spec["backbone"] = jsonable(dino.backbone)
    elif row == "supervised":
        spec["backbone"] = jsonable(dino.backbone)
        spec["supervised"] = jsonable(_supervised_config(seed, budget, dino))
        spec["pretrain_scenes"] = budget.pretrain_scenes
    elif row in CEILING_ROWS:
        spec["backbone"] = jsonable(dino.backbone)
        spec[row] = {**jsonable(_supervised_config(seed, budget, dino)), **constants(row)}
        spec["pretrain_scenes"] = budget.pretrain_scenes
    elif row == "base":
        spec["backbone"] = jsonable(dino.backbone)
    else:
        spec["config"] = jsonable(_method_config(row, seed, budget))
    if budget.init is not None and ("config" in spec or row == "base"):
        spec["init"] = init_identity(budget.init)  # another base: other cells
    if dry:
        return {"spec": spec}
    assert folder is not None
    datasets = eval_datasets(budget)
    if row.startswith("onehot"):
        from densessl.evaluation.oracle import LabelOracle, LabelPaintedDataset

        painted = {k: LabelPaintedDataset(v) for k, v in datasets.items()}
        oracle = LabelOracle(datasets["val"].num_classes, spec["patch_size"])
        return {"spec": spec, "extractor": oracle, "eval_datasets": painted, "training": {}}
    if row == "random":
        from densessl.models.vit import build_backbone

        torch.manual_seed(seed)
        return _with_extractor(spec, build_backbone(dino.backbone), datasets, {"steps": 0})
    if row == "supervised":
        return _train_supervised(spec, seed, budget, dino, folder, datasets)
    if row in CEILING_ROWS:
        return _train_ceiling(row, spec, seed, budget, dino, folder, datasets)
    from densessl.evaluation.features import build_extractor
    from densessl.train.trainer import Trainer

    if row == "base":
        if budget.init is None:
            raise ValueError("the base row needs Budget.init (quality.py --from-base)")
        extractor = build_extractor(budget.init, which="teacher")
        return {"spec": spec, "extractor": extractor, "eval_datasets": datasets, "training": {}}
    config = _method_config(row, seed, budget)
    run = folder / "run"
    Trainer(config, run, init=budget.init).fit()
    training = _training_from_metrics(run, budget.batch_size)
    extractor = build_extractor(run, which="teacher")
    return {"spec": spec, "extractor": extractor, "eval_datasets": datasets, "training": training}


def init_identity(init: str) -> dict[str, str]:
    """What names the post-training base in a cell's spec: its file name and content hash
    (a run directory means its ``checkpoints/last.pt``), not where it lies."""
    import hashlib

    from densessl.train.warm_start import resolve_weights_file

    path = resolve_weights_file(init)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "sha256": digest.hexdigest()}


def _supervised_config(seed: int, budget: Any, dino: Any) -> Any:
    from densessl.train.supervised import SupervisedConfig

    return SupervisedConfig(
        steps=budget.steps,
        batch_size=budget.batch_size,
        crop_size=dino.views.global_size,
        crop_scale=tuple(dino.views.global_scale),
        lr=budget.supervised_lr,
        seed=seed,
        checkpoint_every_s=300.0,
    )


def _train_scenes(budget: Any) -> Any:
    """The training scenes of the supervised rows (the methods' pretraining scenes)."""
    from densessl.data.scenes.dataset import SyntheticScenes

    return SyntheticScenes(
        num_images=budget.pretrain_scenes,
        size=budget.scenes_size,
        seed=0,
        split="train",
        **budget.scene_options(),
    )


def _train_ceiling(
    row: str, spec: dict, seed: int, budget: Any, dino: Any, folder: Path, datasets: dict
) -> dict[str, Any]:
    config = _supervised_config(seed, budget, dino)
    backbone, history = train_ceiling(row, dino.backbone, _train_scenes(budget), config, folder)
    return _with_extractor(spec, backbone, datasets, _training_record(history, "accuracy"))


def _train_supervised(
    spec: dict[str, Any], seed: int, budget: Any, dino: Any, folder: Path, datasets: dict
) -> dict[str, Any]:
    from densessl.train.supervised import train_supervised

    scenes = _train_scenes(budget)
    config = _supervised_config(seed, budget, dino)
    backbone, history = train_supervised(dino.backbone, scenes, scenes.num_classes, config, folder)
    return _with_extractor(spec, backbone, datasets, _training_record(history, "pixel_accuracy"))


def _training_record(history: list[dict[str, Any]], accuracy: str) -> dict[str, Any]:
    """A cell's ``training`` entry from a supervised-style history (its last logged step)."""
    first, last = history[0], history[-1]
    return {
        "steps": last["step"],
        "first_loss": first["loss"],
        "final_loss": last["loss"],
        "train_seconds": last["seconds"],
        "img_s": last["img_s"],
        accuracy: last[accuracy],
    }


def _with_extractor(spec: dict, backbone: Any, datasets: dict, training: dict) -> dict[str, Any]:
    from densessl.evaluation.features import PatchFeatureExtractor

    source = {"kind": "module", "description": spec["row"]}
    extractor = PatchFeatureExtractor(backbone, backbone.patch_size, source)
    return {"spec": spec, "extractor": extractor, "eval_datasets": datasets, "training": training}


def evaluate_backbone(extractor: Any, datasets: dict[str, Any], budget: Any) -> dict[str, Any]:
    """Linear probe (+ overclustering, retrieval and the image-level and video columns of
    ``quality_columns.py`` unless the extractor is an oracle)."""
    from densessl.evaluation.api import resolve_protocol
    from densessl.evaluation.linear.probe import train_linear_probe
    from densessl.evaluation.overcluster import evaluate_overclustering
    from densessl.evaluation.report import jsonable, summarize
    from densessl.evaluation.retrieval import evaluate_retrieval

    start = time.perf_counter()
    train, val = datasets["train"], datasets["val"]
    size = budget.scenes_size
    oracle = getattr(extractor, "source", {}).get("kind") == "oracle"
    results: dict[str, float] = {}
    summary: dict[str, Any] = {}

    linear = resolve_protocol("linear", "scenes", budget.linear, size)
    out = train_linear_probe(extractor, train, val, linear, progress=False)
    results["linear"] = 100 * out["miou"]
    summary["linear"] = summarize("linear", linear, jsonable(out))
    if not oracle:
        cluster = resolve_protocol("cluster", "scenes", budget.cluster, size)
        out = evaluate_overclustering(extractor, val, cluster, progress=False)
        for key, entry in out["results"].items():
            k = int(key.split("=")[1])
            name = "cluster_C" if k == val.num_classes else f"cluster_{k // val.num_classes}C"
            results[name] = 100 * entry["miou_mean"]
        summary["cluster"] = summarize("cluster", cluster, jsonable(out))
        retrieval = resolve_protocol("retrieval", "scenes", budget.retrieval, size)
        out = evaluate_retrieval(extractor, train, val, retrieval, progress=False)
        results["retrieval"] = 100 * out["miou_no_matching"]
        summary["retrieval"] = summarize("retrieval", retrieval, jsonable(out))
        from quality_columns import evaluate_finetuned, evaluate_image_level

        more, rows = evaluate_image_level(extractor, budget)
        results.update(more)
        summary.update(rows)
        tuned = evaluate_finetuned(extractor, budget)
        if tuned is not None:
            results["finetune"] = tuned[0]
            summary["finetune"] = {k: tuned[1][k] for k in ("settings", "source", "results")}
    return {
        "results": results,
        "summary": summary,
        "seconds": time.perf_counter() - start,
        "picture_features": _picture_features(extractor, val),
    }


def _picture_features(extractor: Any, val: Any) -> dict[str, torch.Tensor]:
    """Patch features of the fixed held-out picture image (normalised like the evaluators)."""
    from densessl.evaluation.preprocess import normalize

    item = val[PICTURE_INDEX]
    image = normalize(item["image"].float() / 255.0)[None]
    with torch.no_grad():
        features = extractor(image)[0].float().cpu()
    return {"features": features, "image": item["image"], "label": torch.as_tensor(item["label"])}


def describe_budget(budget: Any) -> dict[str, Any]:
    from densessl.evaluation.report import jsonable

    return jsonable(dataclasses.asdict(budget))
