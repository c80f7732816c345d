"""Dense nearest-neighbour retrieval ("Hummingbird", Balazevic et al., NeurIPS 2023).

Follows open-hummingbird-eval (vpariza/open-hummingbird-eval @5e79da2, hbird/hbird_eval.py):

* **Memory** (train split), ``augment_epochs`` passes: paired random resized crop of image
  and label (same box; torchvision's RandomResizedCrop sampling with ``scale=(0.5, 2.0)``:
  draws with an area above the image are rejected, after 10 rejections the central crop is
  used) to ``image_size``, then colour jitter (brightness, contrast, saturation, hue each
  0.1, each applied with p = 0.5, in that order). Patch features are L2-normalised. The
  soft label of a patch is the class histogram of its GT pixels.
* **Bounded memory**: each augmented image keeps ``memory_size // (n_train * epochs)``
  patches, favouring rare classes: score = sum over the classes present in the patch of the
  number of patches of that image containing the class, times U(0, 1) noise; lowest kept.
* **Retrieval** (val split): resize to ``image_size``; the ``k`` nearest memory patches by
  cosine similarity; ``softmax(sim / T)``-weighted sum of their soft labels; reshape to the
  patch grid, bilinear upsample to ``image_size``, argmax; dataset-level mIoU against the GT
  resized (nearest) to ``image_size``.

Differences from the official code:

* mIoU is reported **without** matching by default (the predictions are class ids already);
  the official code applies Hungarian matching (``hungarian=True`` for parity). Both values
  are always returned.
* Pixels labelled ``ignore_index`` are left out of the memory's label histograms (a patch
  whose pixels are all ignored gets an all-zero label and is sampled last); the official
  code remaps them to class 0 (``ignore_to_background=True``).
* The correct ImageNet std (0.225) is used; ``legacy_std=True`` uses the official 0.255.
* Exact k-NN in torch by chunks (the official code uses faiss-GPU or ScaNN);
  ``search_backend="faiss"`` uses faiss' exact ``IndexFlatIP`` when installed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from densessl.evaluation.checks import check_fields
from densessl.evaluation.miou import ConfusionMatrix
from densessl.evaluation.preprocess import (
    HUMMINGBIRD_LEGACY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Extractor,
    ResizedSegmentation,
    eval_mode,
    extract_features,
    make_loader,
    normalize,
    random_color_jitter,
    resize_image,
    resize_label,
    sample_crop_box,
)

__all__ = [
    "RetrievalProtocol",
    "build_memory",
    "evaluate_retrieval",
    "knn_search",
    "patch_label_histograms",
    "predict_soft_labels",
    "select_rare_patches",
]


@dataclass
class RetrievalProtocol:
    """Settings of the dense retrieval evaluation (defaults: Hummingbird, DINO ViT-S/16).

    Attributes:
        image_size: Square input side for memory and queries (scores computed at this size).
        memory_size: Total memory patches (``None``: keep every patch of every pass).
        num_neighbors: ``k`` nearest neighbours.
        temperature: Softmax temperature on cosine similarities.
        augment_epochs: Augmented passes over the train split.
        crop_scale: RandomResizedCrop area range (fractions of the image area).
        crop_ratio: RandomResizedCrop aspect-ratio range.
        brightness / contrast / saturation / hue: Colour-jitter strengths.
        jitter_p: Probability of applying each jitter.
        seed: Seed of augmentation and sampling noise.
        batch_size: Images per extractor call.
        num_workers: DataLoader workers.
        query_chunk: Query patches per similarity block.
        memory_chunk: Memory patches per similarity block.
        hungarian: Report the Hungarian-matched mIoU as ``"miou"`` (official behaviour).
        ignore_to_background: Count ignored memory pixels as class 0 (official behaviour).
        legacy_std: Normalise with the official (mistyped) std 0.255 for blue.
        search_backend: ``"torch"`` or ``"faiss"`` (exact inner-product search).
    """

    image_size: int = 512
    memory_size: int | None = 102_400
    num_neighbors: int = 30
    temperature: float = 0.02
    augment_epochs: int = 2
    crop_scale: tuple[float, float] = (0.5, 2.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    jitter_p: float = 0.5
    seed: int = 0
    batch_size: int = 16
    num_workers: int = 0
    query_chunk: int = 4096
    memory_chunk: int = 262_144
    hungarian: bool = False
    ignore_to_background: bool = False
    legacy_std: bool = False
    search_backend: str = "torch"

    def __post_init__(self) -> None:
        check_fields(
            self,
            ints=dict(image_size=1, num_neighbors=1, augment_epochs=1, seed=0, batch_size=1),
            optional_ints={"memory_size": 1},
            positive=("temperature",),
            non_negative=("brightness", "contrast", "saturation"),
            within={"jitter_p": (0, 1), "hue": (0, 0.5)},
            ranges=("crop_scale", "crop_ratio"),
            bools=("hungarian", "ignore_to_background", "legacy_std"),
            choices={"search_backend": ("torch", "faiss")},
        )
        check_fields(self, ints=dict(num_workers=0, query_chunk=1, memory_chunk=1))

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides) -> RetrievalProtocol:
        """Tiny CPU preset: small inputs, 20k-patch memory, k = 10."""
        base = cls(image_size=image_size, memory_size=20_000, num_neighbors=10, batch_size=64)
        return replace(base, **overrides)

    @property
    def std(self) -> tuple[float, float, float]:
        return HUMMINGBIRD_LEGACY_STD if self.legacy_std else IMAGENET_STD


class _AugmentedMemoryView(Dataset):
    """One augmented pass over the train split; item ``i`` of pass ``epoch`` is seeded."""

    def __init__(self, dataset: Dataset, protocol: RetrievalProtocol, epoch: int) -> None:
        self.dataset, self.p, self.epoch = dataset, protocol, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        p = self.p
        gen = torch.Generator().manual_seed((p.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        item = self.dataset[i]
        image, label = item["image"], torch.as_tensor(item["label"])
        top, left, h, w = sample_crop_box(*label.shape[-2:], p.crop_scale, p.crop_ratio, gen)
        image = resize_image(image[:, top : top + h, left : left + w], p.image_size)
        label = resize_label(label[top : top + h, left : left + w], p.image_size)
        jitter = (p.brightness, p.contrast, p.saturation, p.hue)
        image = random_color_jitter(image, gen, *jitter, p=p.jitter_p)
        image = normalize(image, IMAGENET_MEAN, p.std)
        return {"image": image, "label": label, "index": int(item.get("index", i))}


# ----------------------------------------------------------------------------- memory


def patch_label_histograms(
    labels: Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Class-pixel counts of every patch of a label map.

    Args:
        labels: ``[B, H, W]`` int labels; pixel row ``y`` belongs to patch row
            ``floor(y * h / H)`` (exact patches when ``H`` is a multiple of ``h``).
        grid: Patch grid ``(h, w)``.
        num_classes: ``C``.
        ignore_index: Pixels with this label are not counted.

    Returns:
        int64 ``[B, h * w, C]`` counts (row-major patches).
    """
    b, height, width = labels.shape
    h, w = grid
    dev = labels.device
    rows = torch.arange(height, device=dev) * h // height
    cols = torch.arange(width, device=dev) * w // width
    patch = (rows[:, None] * w + cols[None, :]).expand(b, -1, -1)
    image = torch.arange(b, device=dev).view(b, 1, 1) * (h * w)
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    flat = ((image + patch) * num_classes + labels)[valid]
    return torch.bincount(flat, minlength=b * h * w * num_classes).view(b, h * w, num_classes)


def select_rare_patches(counts: Tensor, keep: int, gen: torch.Generator) -> Tensor:
    """Pick ``keep`` patches per image, favouring patches of rare classes (Hummingbird).

    A patch's score is the sum, over the classes present in it, of the number of patches of
    the same image that contain the class; scores are multiplied by U(0, 1) noise and the
    lowest are kept. Patches without any counted pixel are taken last.

    Args:
        counts: ``[B, P, C]`` per-patch class counts.
        keep: Patches to keep per image (``<= P``).
        gen: CPU generator for the noise.

    Returns:
        int64 ``[B, keep]`` patch indices.
    """
    present = (counts > 0).float()
    freq = present.sum(dim=1)  # [B, C]: patches containing each class
    score = torch.einsum("bpc,bc->bp", present, freq)
    noise = torch.rand(score.shape, generator=gen, dtype=score.dtype).to(score.device)
    score = torch.where(present.sum(dim=2) > 0, score * noise, torch.full_like(score, math.inf))
    return torch.topk(score, keep, dim=1, largest=False).indices


@torch.no_grad()
def build_memory(
    extractor: Extractor,
    dataset: Dataset,
    protocol: RetrievalProtocol,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Memory of L2-normalised patch features and soft labels from the train split.

    Returns:
        ``(features [M, D], labels [M, C])`` float32 on ``device``; rows of ``labels`` sum
        to 1 (or 0 for patches whose pixels are all ignored).
    """
    p = protocol
    num_classes = int(dataset.num_classes)  # type: ignore[attr-defined]
    ignore = int(getattr(dataset, "ignore_index", 255))
    n_train = len(dataset)  # type: ignore[arg-type]
    keep = None
    if p.memory_size is not None:
        keep = max(1, p.memory_size // max(1, n_train * p.augment_epochs))
    gen = torch.Generator().manual_seed(p.seed)
    feats, labels = [], []
    with eval_mode(extractor):
        for epoch in range(p.augment_epochs):
            loader = make_loader(
                _AugmentedMemoryView(dataset, p, epoch), p.batch_size, p.num_workers
            )
            desc = f"retrieval: memory {epoch + 1}/{p.augment_epochs}"
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                f = extract_features(extractor, batch["image"].to(device))
                b, h, w, d = f.shape
                f = F.normalize(f.reshape(b, h * w, d), dim=-1)
                target = batch["label"].to(f.device)
                if p.ignore_to_background:
                    target = torch.where(target == ignore, torch.zeros_like(target), target)
                counts = patch_label_histograms(target, (h, w), num_classes, ignore)
                if keep is not None and keep < h * w:
                    idx = select_rare_patches(counts, keep, gen)
                    f = f.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
                    counts = counts.gather(1, idx.unsqueeze(-1).expand(-1, -1, num_classes))
                soft = counts.float() / counts.sum(dim=-1, keepdim=True).clamp_min(1).float()
                feats.append(f.reshape(-1, d))
                labels.append(soft.reshape(-1, num_classes))
    return torch.cat(feats), torch.cat(labels)


# ----------------------------------------------------------------------------- retrieval


def knn_search(
    queries: Tensor,
    keys: Tensor,
    k: int,
    query_chunk: int = 4096,
    key_chunk: int = 262_144,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` inner-product search, chunked over queries and keys.

    Returns:
        ``(similarities [Q, k], indices [Q, k])``, best first, on the queries' device.
    """
    k = min(k, keys.shape[0])
    if backend == "faiss":
        try:
            import faiss
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("search_backend='faiss' needs `pip install faiss-cpu`") from err
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.detach().float().cpu().contiguous().numpy())
        sims, idx = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(sims).to(queries.device), torch.from_numpy(idx).to(queries.device)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    keys = keys.to(queries.device)
    all_sims, all_idx = [], []
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs : qs + query_chunk]
        best_s, best_i = None, None
        for ks in range(0, keys.shape[0], key_chunk):
            s = q @ keys[ks : ks + key_chunk].T
            v, i = s.topk(min(k, s.shape[1]), dim=1)
            i = i + ks
            if best_s is not None:
                merged = torch.cat([best_s, v], 1)
                v, j = merged.topk(min(k, merged.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = v, i
        all_sims.append(best_s)
        all_idx.append(best_i)
    return torch.cat(all_sims), torch.cat(all_idx)


@torch.no_grad()
def predict_soft_labels(
    queries: Tensor, mem_feats: Tensor, mem_labels: Tensor, protocol: RetrievalProtocol
) -> Tensor:
    """Soft labels ``[Q, C]`` of query patches ``[Q, D]`` (chunked over queries).

    The soft labels of the ``k`` nearest memory patches are averaged with weights
    ``softmax(cos(q, m_j) / T)``.
    """
    p = protocol
    out = []
    for s in range(0, queries.shape[0], p.query_chunk):
        q = F.normalize(queries[s : s + p.query_chunk], dim=-1)
        sims, idx = knn_search(
            q, mem_feats, p.num_neighbors, p.query_chunk, p.memory_chunk, p.search_backend
        )
        weights = torch.softmax(sims / p.temperature, dim=1)
        labels = mem_labels[idx.to(mem_labels.device)].to(q.device)
        out.append(torch.einsum("qk,qkc->qc", weights, labels))
    return torch.cat(out)


@torch.no_grad()
def evaluate_retrieval(
    extractor: Extractor,
    train_dataset: Dataset,
    val_dataset: Dataset,
    protocol: RetrievalProtocol | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Dense nearest-neighbour retrieval mIoU (memory from ``train_dataset``).

    Args:
        extractor: ``images [B, 3, H, W] -> patches [B, h, w, D]``.
        train_dataset: Labeled dataset building the memory.
        val_dataset: Labeled dataset that is scored (same classes).
        protocol: Settings (default :class:`RetrievalProtocol`).
        device: Device for the extractor, the memory and the search.
        progress: Show tqdm progress bars.

    Returns:
        ``{"protocol", "miou" (Hungarian-matched iff ``protocol.hungarian``),
        "miou_no_matching", "miou_hungarian", "per_class_iou" (of ``"miou"``),
        "memory_size", "num_train", "num_val"}``.
    """
    p = protocol or RetrievalProtocol()
    num_classes = int(val_dataset.num_classes)  # type: ignore[attr-defined]
    if int(train_dataset.num_classes) != num_classes:  # type: ignore[attr-defined]
        raise ValueError("train and val datasets have different num_classes")
    ignore = int(getattr(val_dataset, "ignore_index", 255))
    mem_feats, mem_labels = build_memory(extractor, train_dataset, p, device, progress)

    val = ResizedSegmentation(val_dataset, p.image_size, p.image_size, IMAGENET_MEAN, p.std)
    cm = ConfusionMatrix(num_classes, ignore_index=ignore)
    loader = make_loader(val, p.batch_size, p.num_workers)
    with eval_mode(extractor):
        for batch in tqdm(loader, desc="retrieval: query", disable=not progress, leave=False):
            f = extract_features(extractor, batch["image"].to(device))
            b, h, w, d = f.shape
            soft = predict_soft_labels(f.reshape(b * h * w, d), mem_feats, mem_labels, p)
            soft = soft.reshape(b, h, w, num_classes).permute(0, 3, 1, 2)
            size = tuple(batch["label"].shape[-2:])
            soft = F.interpolate(soft, size=size, mode="bilinear", align_corners=False)
            cm.update(soft.argmax(dim=1), batch["label"].to(soft.device))

    plain = cm.compute("none")
    matched = cm.compute("hungarian")
    chosen = matched if p.hungarian else plain
    return {
        "protocol": asdict(p),
        "miou": chosen["miou"],
        "miou_no_matching": plain["miou"],
        "miou_hungarian": matched["miou"],
        "per_class_iou": chosen["per_class_iou"],
        "memory_size": int(mem_feats.shape[0]),
        "num_train": len(train_dataset),  # type: ignore[arg-type]
        "num_val": len(val_dataset),  # type: ignore[arg-type]
    }
