"""How an overclustering run compares with Leopart's official pipeline, in words.

Leopart (MkuuWaUjinga/leopart @7835701): ``experiments/overcluster/sup_overcluster.py``, its
configs under ``experiments/overcluster/configs/`` and the data modules under ``data/``.
:func:`official_loader` is the batch size and ``drop_last`` of Leopart's val loader for a
dataset; :func:`differences_from_official` lists every remaining difference of a run, and
:func:`densessl.evaluation.overcluster.evaluate_overclustering` puts the list in its result
(``"differences_from_official"``).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset

__all__ = [
    "OFFICIAL_SETTINGS",
    "dataset_kind",
    "differences_from_official",
    "official_loader",
    "scored_images",
]

#: Settings of every Leopart overclustering config (``val:`` section and the fixed values of
#: ``sup_overcluster.py`` / ``experiments/utils.py``).
OFFICIAL_SETTINGS: dict[str, Any] = {
    "image_size": 448,
    "mask_size": 100,
    "pca_dim": 50,
    "seeds": (0, 1, 2, 3, 4),
    "iters": 100,
    "n_init": 5,
    "max_points_per_centroid": 256,
    "standardize": True,
    "many_to_one_criterion": "precision",
    "label_resize": "leopart",
}

#: Measured on a toy set by an independent check (issue #26): per-seed mIoU of the torch path
#: against the official faiss pipeline.
TORCH_BACKEND_NOTE = (
    "backend=torch approximates the official numerics: k-means in torch (k-means++ init by "
    "default, +3.1 mIoU points vs official on a toy set; init=random draws k distinct "
    "training rows but not faiss' random stream, -12.4 points there) and PCA fitted in "
    "float64 on every row (faiss fits on a seeded sample of at most 1000*D rows in float32: "
    "projections differed by up to 0.60 above that cap and agreed to 4e-6 below it); "
    "standardisation is two-pass float64 (not sklearn's chunked updates)"
)


def dataset_kind(dataset: object) -> str | None:
    """``"voc"``, ``"coco"`` or ``"ade20k"`` for densessl's layouts, else None."""
    from densessl.data.segmentation.ade20k import ADE20K
    from densessl.data.segmentation.coco import COCOStuff, COCOThings
    from densessl.data.segmentation.voc import VOCSegmentation

    if isinstance(dataset, VOCSegmentation):
        return "voc"
    if isinstance(dataset, COCOStuff | COCOThings):
        return "coco"
    if isinstance(dataset, ADE20K):
        return "ade20k"
    return None


def official_loader(kind: str | None) -> tuple[int | None, bool]:
    """``(batch size, drop_last)`` of Leopart's val loader for a dataset kind.

    VOC: ``VOCDataModule(drop_last=True)`` at batch 60 (``configs/pascal/*.yml``; the ViT-B/8
    configs use 10), which scores 1440 of the 1449 val images. COCO (``CocoDataModule``)
    and ADE20K (``Ade20kDataModule``) keep the last batch (``drop_last=False``, batch 40).
    Other datasets have no official loader: ``(None, False)``.
    """
    return {"voc": (60, True), "coco": (40, False), "ade20k": (40, False)}.get(
        kind or "", (None, False)
    )


def scored_images(dataset: Dataset, protocol: Any) -> tuple[Dataset, dict]:
    """The images that are scored: all, or all but the last incomplete batch (``drop_last``).

    Returns:
        ``(dataset or its leading Subset, {"drop_last", "num_images_total", "num_images",
        "num_images_dropped"})``.
    """
    total = len(dataset)  # type: ignore[arg-type]
    drop = protocol.drop_last
    if drop is None:
        drop = official_loader(dataset_kind(dataset))[1]
    dropped = total % protocol.batch_size if drop else 0
    if dropped == total and total:
        raise ValueError(
            f"drop_last: all {total} images fall in the last incomplete batch "
            f"(batch_size={protocol.batch_size}); lower batch_size or set drop_last=false"
        )
    counts = {
        "drop_last": bool(drop),
        "num_images_total": total,
        "num_images": total - dropped,
        "num_images_dropped": dropped,
    }
    return (Subset(dataset, range(total - dropped)) if dropped else dataset), counts


def _software() -> str:
    import numpy as np

    try:
        import faiss

        version = f"faiss {faiss.__version__}"
    except ImportError:
        version = "no faiss"
    return (
        f"software: {version}, numpy {np.__version__} here; Leopart's environment.yml pins "
        "faiss 1.7.1 (conda, MKL), scikit-learn 1.0.1, numpy 1.21.2, torch 1.10: the same "
        "parameters (faiss options added since 1.7.1 stay at their defaults), not compared "
        "against faiss 1.7.1 itself; BLAS/LAPACK float rounding (and with it the odd k-means "
        "assignment) can differ"
    )


def differences_from_official(
    p: Any, backend: str, kind: str | None, counts: dict[str, Any]
) -> list[str]:
    """Every remaining difference of a run from Leopart's pipeline.

    Args:
        p: the :class:`~densessl.evaluation.overcluster.OverclusterProtocol` run.
        backend: the backend used (``"faiss"`` or ``"torch"``).
        kind: :func:`dataset_kind` of the scored dataset.
        counts: ``num_images_total``, ``num_images`` (scored), ``num_images_dropped``.
    """
    out = [
        "images: bilinear antialiased torch resize of the float image; Leopart resizes the "
        "PIL image (torchvision T.Resize, PIL bilinear) to uint8, so pixel values differ by "
        "that rounding",
        _software(),
    ]
    if backend != "faiss":
        out.append(TORCH_BACKEND_NOTE)
    for key, official in OFFICIAL_SETTINGS.items():
        value = getattr(p, key)
        value = tuple(value) if isinstance(value, list | tuple) else value
        if value != official:
            out.append(f"setting {key}={value!r} (Leopart: {official!r})")
    batch, official_drop = official_loader(kind)
    total, dropped = counts["num_images_total"], counts["num_images_dropped"]
    if batch is None:
        out.append(f"dataset: no official Leopart loader; {counts['num_images']} images scored")
    else:
        want = total % batch if official_drop else 0
        if dropped != want:
            out.append(
                f"images scored: {total - dropped} of {total} (drop_last={bool(dropped)}, "
                f"batch_size={p.batch_size}); Leopart's loader (batch {batch}, "
                f"drop_last={official_drop}) scores {total - want}"
            )
    if kind == "coco":
        out.append(
            "image order: Leopart shuffles the COCO val file list with an unseeded "
            "random.shuffle, so the rows that faiss samples to train PCA and k-means are not "
            "reproducible; densessl keeps the sorted file list"
        )
    if kind == "ade20k":
        out.append(
            "labels: Leopart's ADE20K overclustering scores 111 part classes of the "
            "street-scene subset (Ade20KPartsDataset); this is the 150-class ADEChallenge set"
        )
    return out
