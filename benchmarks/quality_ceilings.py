"""Protocol-fitting ceiling rows of the quality benchmark (see ``quality.py``).

The ``supervised`` row trains patch tokens on the masks, which is the ceiling of the dense
columns but not of two image-level ones: its CLS token is never trained (k-NN reads the
CLS), and class-level patch features cannot tell two places of one object apart (PCK asks
exactly that). Each row here trains the same tiny ViT, with the same steps, batch, training
scenes and crop rule as ``supervised`` (:mod:`densessl.train.supervised`), on the label
its column measures, never on anything from the evaluation split:

* ``supervised-image`` (ceiling of k-NN top-1): a linear head on the final CLS token,
  cross-entropy on the crop's dominant object class, the definition of
  :func:`densessl.data.classification.scene_labels.dominant_class` applied to the crop's
  label map (nearest-resized like the crop). The crop's map, not the whole scene's:
  a crop can cut the scene's dominant object out, and a label the network cannot see is
  noise; at evaluation the network sees the whole scene and its label is the whole scene's,
  so in both cases the label is that of the pixels the network sees. Crops without any
  object pixel are left out of the loss, as the k-NN split leaves such scenes out.
* ``supervised-match`` (ceiling of PCK@0.1): two views of one training scene per item,
  each drawn by the supervised crop rule (RandomResizedCrop box, area ``crop_scale``,
  aspect 3/4-4/3, resized to ``crop_size``, flipped with p = 0.5) with fresh boxes every
  step; ``MATCH_POINTS`` scene points drawn uniformly in the boxes' intersection are mapped
  exactly into both views (pixel centres at +0.5, as :mod:`densessl.data.keypoints.scenes`).
  Like the correspondence protocol, a point's query feature is the bilinear sample of the
  L2-normalised patch grid (``align_corners=True``,
  :func:`~densessl.evaluation.correspondence.matching.keypoint_features`); its logits are
  the cosine similarities to every patch of the other view over ``MATCH_TEMPERATURE``;
  cross-entropy with the patch that contains the point as the positive, every other patch
  of that view as negatives (InfoNCE), in both directions.

Training as the supervised row: AdamW (no decay on biases and norms), linear warm-up and
cosine decay (:func:`densessl.ops.schedules.warmup_cosine`), autocast dtype from
:func:`densessl.train.precision.resolve_precision`. All randomness of a step comes from a
generator seeded by ``(seed, step)`` (the image row draws the supervised row's very crops, the
match row its own stream); the run resumes exactly from ``ceiling.pt``
(written atomically every ``checkpoint_every_s`` seconds and at the end). Only the
backbone is evaluated; the heads never touch the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.data.classification.scene_labels import dominant_class
from densessl.evaluation.preprocess import normalize, resize_image, sample_crop_box
from densessl.io.checkpoint import CheckpointError, load_file, save_atomic
from densessl.models.vit import BackboneConfig, ViTBackbone, build_backbone
from densessl.ops.schedules import warmup_cosine
from densessl.train.numerics import NonFiniteLossError
from densessl.train.precision import autocast, resolve_device, resolve_precision
from densessl.train.supervised import SupervisedConfig, sample_batch

CEILING_ROWS = ("supervised-image", "supervised-match")
CHECKPOINT = "ceiling.pt"
IGNORE = -100  # cross-entropy target of crops without any object (left out of the loss)
#: InfoNCE temperature on the cosine similarities of ``supervised-match`` (a common InfoNCE
#: value, stated here once and not tuned).
MATCH_TEMPERATURE = 0.1
#: Scene points per view pair of ``supervised-match``.
MATCH_POINTS = 32
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range of the supervised crop rule


def match_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of a ``supervised-match`` step (its own stream,
    apart from the supervised row's ``(seed, step)`` crops)."""
    return torch.Generator().manual_seed(((seed + 1) * 1_000_003 + step) * 64 + 29)


# --- supervised-image -------------------------------------------------------------------------


def image_batch(
    dataset: Any, config: SupervisedConfig, step: int, things: list[int]
) -> tuple[Tensor, Tensor]:
    """``images [B, 3, S, S]`` (normalised) and each crop's dominant class ``[B]`` (an index
    into ``things``, ``IGNORE`` without any object): the very crops of the supervised row's
    ``(seed, step)`` (:func:`densessl.train.supervised.sample_batch`), another label."""
    images, labels = sample_batch(dataset, config, step)
    classes = [dominant_class(label, things) for label in labels]
    return images, torch.tensor([IGNORE if c is None else c for c in classes])


class ImageClassifier(nn.Module):
    """The backbone with a linear head on its final CLS token ``[B, D] -> [B, classes]``."""

    def __init__(self, backbone: ViTBackbone, num_classes: int) -> None:
        super().__init__()
        if not backbone.has_cls_token:
            raise ValueError("supervised-image needs a backbone with a CLS token")
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.resolved_embed_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone.tokens(images)[0])


# --- supervised-match -------------------------------------------------------------------------


def _view_box(
    h: int, w: int, config: SupervisedConfig, gen: torch.Generator
) -> tuple[int, int, int, int, bool]:
    top, left, bh, bw = sample_crop_box(h, w, config.crop_scale, RATIO, gen)
    return top, left, bh, bw, bool(torch.rand((), generator=gen) < 0.5)


def to_view(xy: Tensor, box: tuple, size: int) -> Tensor:
    """Scene pixel coordinates ``[P, 2]`` (x, y) -> coordinates in the ``size`` view of
    ``box = (top, left, h, w, flip)`` (mirrored to ``size - u`` when flipped)."""
    top, left, h, w, flip = box
    uv = (xy - torch.tensor([left, top], dtype=xy.dtype)) * torch.tensor([size / w, size / h])
    if flip:
        uv[:, 0] = size - uv[:, 0]
    return uv


def match_batch(
    dataset: Any, config: SupervisedConfig, step: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``views [2, B, 3, S, S]`` and the points ``[2, B, P, 2]`` (x, y view pixels) of
    ``MATCH_POINTS`` scene points in both views; ``valid [B]`` is False for the rare pair
    whose boxes never intersect in 20 draws (left out of the loss), ``images`` normalised."""
    gen = match_generator(config.seed, step)
    indices = torch.randint(0, len(dataset), (config.batch_size,), generator=gen).tolist()
    size = config.crop_size
    views: list[list[Tensor]] = [[], []]
    points: list[list[Tensor]] = [[], []]
    valid = []
    for index in indices:
        image = dataset[index]["image"]
        h, w = image.shape[-2:]
        for _ in range(20):
            boxes = [_view_box(h, w, config, gen) for _ in range(2)]
            y0 = max(b[0] for b in boxes)
            x0 = max(b[1] for b in boxes)
            y1 = min(b[0] + b[2] for b in boxes)
            x1 = min(b[1] + b[3] for b in boxes)
            if x1 > x0 and y1 > y0:
                break
        valid.append(x1 > x0 and y1 > y0)
        u = torch.rand(MATCH_POINTS, 2, generator=gen, dtype=torch.float64)
        lo = torch.tensor([x0, y0], dtype=torch.float64)
        span = torch.tensor([max(x1 - x0, 0), max(y1 - y0, 0)], dtype=torch.float64)
        xy = lo + u * span
        for k, (top, left, bh, bw, flip) in enumerate(boxes):
            view = resize_image(image[:, top : top + bh, left : left + bw], size)
            views[k].append(normalize(view.flip(-1) if flip else view))
            points[k].append(to_view(xy, boxes[k], size).float())
    return (
        torch.stack([torch.stack(v) for v in views]),
        torch.stack([torch.stack(p) for p in points]),
        torch.tensor(valid),
        torch.tensor(indices),
    )


def match_logits(source: Tensor, target: Tensor, points: Tensor, size: int) -> Tensor:
    """``[B, P, h*w]`` cosine similarities / ``MATCH_TEMPERATURE`` of the source features at
    ``points [B, P, 2]`` (bilinear, ``align_corners=True``, as the protocol samples a source
    keypoint) to every target patch; ``source`` / ``target`` L2-normalised ``[B, D, h, w]``."""
    grid = (points / size * 2 - 1)[:, :, None, :].to(source)  # [B, P, 1, 2]
    query = F.grid_sample(source, grid, mode="bilinear", align_corners=True)[..., 0]
    return torch.einsum("bdp,bdn->bpn", query, target.flatten(2)) / MATCH_TEMPERATURE


def cell_index(points: Tensor, size: int, grid: tuple[int, int]) -> Tensor:
    """``[B, P]`` row-major index of the patch containing each point ``[B, P, 2]``."""
    h, w = grid
    col = (points[..., 0] * w / size).floor().long().clamp(0, w - 1)
    row = (points[..., 1] * h / size).floor().long().clamp(0, h - 1)
    return row * w + col


class PatchMatcher(nn.Module):
    """The backbone's L2-normalised patch grid ``[B, D, h, w]``."""

    def __init__(self, backbone: ViTBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.tokens(images)[1].permute(0, 3, 1, 2).float(), dim=1)


# --- training loop ----------------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _identity(row: str, backbone: BackboneConfig, config: SupervisedConfig, extra: dict) -> str:
    settings = dataclasses.asdict(config)
    for key in ("device", "checkpoint_every_s", "log_every"):  # do not change the weights
        settings.pop(key)
    values = {"row": row, "backbone": dataclasses.asdict(backbone), "config": settings, **extra}
    return json.dumps(values, sort_keys=True, default=str)


def constants(row: str) -> dict[str, Any]:
    """The row's fixed constants (in its spec and its checkpoint's identity)."""
    if row == "supervised-match":
        return {"temperature": MATCH_TEMPERATURE, "points": MATCH_POINTS, "ratio": RATIO}
    return {"ratio": RATIO, "ignore": "crops without objects"}


def train_ceiling(
    row: str,
    backbone_config: BackboneConfig,
    dataset: Any,
    config: SupervisedConfig,
    out: str | Path,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ViTBackbone, list[dict[str, Any]]]:
    """Train ``row`` on ``dataset`` (scenes' train split); resume from ``out`` when it holds a run.

    Returns:
        ``(backbone in eval mode, history)``; entries hold ``step``, ``loss``,
        ``accuracy`` (training top-1 of the class / of the matched patch), ``lr``, ``img_s``
        (crops per second; a match item is two crops) and the run's ``seconds`` so far.

    Raises:
        CheckpointError: ``out`` holds a checkpoint of a different configuration.
        NonFiniteLossError: the loss became NaN/inf (names the step).
    """
    if row not in CEILING_ROWS:
        raise ValueError(f"row must be one of {CEILING_ROWS}, got {row!r}")
    out = Path(out)
    device = resolve_device(config.device)
    dtype, _ = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    backbone = build_backbone(backbone_config)
    stuff = dataset.config.num_stuff_classes
    things = list(range(stuff, dataset.num_classes))
    if row == "supervised-image":
        model: nn.Module = ImageClassifier(backbone, len(things))
    else:
        model = PatchMatcher(backbone)
    model = model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    identity = _identity(row, backbone_config, config, constants(row))
    start, history, seconds = 0, [], 0.0
    path = out / CHECKPOINT
    if path.is_file():
        state = load_file(path)
        if state.get("config") != identity:
            raise CheckpointError(f"{path} was written for a different {row} configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        seconds = float(state["seconds"])

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        out.mkdir(parents=True, exist_ok=True)
        save_atomic({**state, "history": history, "seconds": seconds, "config": identity}, path)

    crops = config.batch_size * (2 if row == "supervised-match" else 1)
    model.train()
    last_save = time.perf_counter()
    window_start, window_crops = time.perf_counter(), 0
    for step in range(start, config.steps):
        tick = time.perf_counter()
        lr = warmup_cosine(
            step, config.steps, config.lr, config.min_lr, config.warmup_steps, rule="linear"
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        if row == "supervised-image":
            got = _image_step(model, dataset, config, step, things, device, dtype)
        else:
            got = _match_step(model, dataset, config, step, device, dtype)
        loss, correct, counted = got
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - tick
        window_crops += crops
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{row} training: loss is {value} at step {done}")
            speed = window_crops / max(time.perf_counter() - window_start, 1e-9)
            entry = {"step": done, "loss": value, "accuracy": correct / max(counted, 1), "lr": lr}
            history.append({**entry, "img_s": speed, "seconds": seconds})
            window_start, window_crops = time.perf_counter(), 0
            if on_log is not None:
                on_log(history[-1])
        if time.perf_counter() - last_save >= config.checkpoint_every_s or done == config.steps:
            save(done)
            last_save = time.perf_counter()
    return model.backbone.eval(), history


def _image_step(
    model: nn.Module, dataset: Any, config: SupervisedConfig, step: int, things: list[int],
    device: torch.device, dtype: torch.dtype | None,
) -> tuple[Tensor, int, int]:  # fmt: skip
    images, labels = image_batch(dataset, config, step, things)
    images, labels = images.to(device), labels.to(device)
    with autocast(device, dtype):
        logits = model(images)
    valid = labels != IGNORE
    if not bool(valid.any()):  # a batch of object-free crops: a zero loss keeps the graph
        return logits.float().sum() * 0.0, 0, 0
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    correct = int(((logits.argmax(1) == labels) & valid).sum())
    return loss, correct, int(valid.sum())


def _match_step(
    model: nn.Module, dataset: Any, config: SupervisedConfig, step: int,
    device: torch.device, dtype: torch.dtype | None,
) -> tuple[Tensor, int, int]:  # fmt: skip
    views, points, valid, _ = match_batch(dataset, config, step)
    size = config.crop_size
    batch = views.shape[1]
    with autocast(device, dtype):
        feats = model(views.flatten(0, 1).to(device))  # [2B, D, h, w]
    feats = feats.float().unflatten(0, (2, batch))
    grid = (feats.shape[-2], feats.shape[-1])
    points, valid = points.to(device), valid.to(device)
    if not bool(valid.any()):  # no pair of boxes intersected: a zero loss keeps the graph
        return feats.sum() * 0.0, 0, 0
    losses, correct, counted = [], 0, 0
    for a, b in ((0, 1), (1, 0)):
        logits = match_logits(feats[a], feats[b], points[a], size)[valid]  # [V, P, h*w]
        target = cell_index(points[b], size, grid)[valid]
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()))
        correct += int((logits.argmax(-1) == target).sum())
        counted += target.numel()
    return sum(losses) / 2, correct, counted
