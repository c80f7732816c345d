"""DAVIS-2017 semi-supervised video object segmentation by label propagation (``video``).

DINO's protocol (facebookresearch/dino @7c446df, eval_video_segmentation.py; SelfPatch and
FLSL reuse it), scored as davisvideochallenge/davis2017-evaluation @ac7c43f
(``evaluation_method.py --task semi-supervised``):

1. **Frames**: the short side resized to ``short_side`` (480), the long side to
   ``floor(480 * long / short / multiple) * multiple`` (multiple 64: 854x480 -> 832x480), bilinear
   (OpenCV's ``INTER_LINEAR`` on uint8), /255, ImageNet mean and the script's std
   ``(0.228, 0.224, 0.225)`` (its typo for 0.229, kept by default so that numbers compare
   with the published ones; ``std_typo=false`` uses 0.229).
2. **First mask**: the frame-0 annotation resized straight to the patch grid with PIL's
   nearest rule, one-hot over ``0 .. max id`` (background included).
3. **Features**: the extractor's last-block patch features (no CLS), L2-normalised.
4. **Propagation** (:mod:`densessl.evaluation.video.propagation`): context = frame 0 + the
   ``n_last_frames`` (7) previous frames' soft labels, affinity ``exp(cos / 0.1)`` in a
   12-patch square window, top-5 jointly over the context, column-normalised.
5. **Output**: bilinear x patch size, per-channel min-max, argmax, nearest to the frame size.
6. **Scores** (:mod:`densessl.evaluation.video.davis_metrics`): J and F (``bound_th`` 0.008)
   per object over frames ``1 .. T-2``; J&F-Mean, J-Mean, F-Mean over all objects pooled.

Differences from the official code:

* Frames are decoded with Pillow and resized in torch (bilinear, half-pixel centres, no
  antialias, rounded to uint8); OpenCV's fixed-point bilinear can differ by one grey level
  (854x480 -> 832x480: 0.003 % of the values, measured with opencv-python-headless 5.0).
* A void label (255) in the first annotation counts as background; the official script
  would give it a channel of its own (DAVIS-2017 val first frames have none).
* A propagated channel that is constant and positive is left as is by the min-max; the
  official ``norm_mask`` divides by zero there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from densessl.errors import ConfigError
from densessl.evaluation.checks import check_fields
from densessl.evaluation.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Extractor,
    eval_mode,
    extract_features,
    normalize,
    resize_label,
)
from densessl.evaluation.video.davis_metrics import aggregate, score_sequence
from densessl.evaluation.video.propagation import propagate_video, soft_to_mask

__all__ = ["DINO_STD", "VideoProtocol", "evaluate_video", "frame_size", "preprocess_frames"]

DINO_STD = (0.228, 0.224, 0.225)
"""The std of DINO's ``color_normalize`` (0.228: a typo for ImageNet's 0.229)."""

DIFFERENCES = [
    "frames decoded with Pillow and resized in torch (bilinear, no antialias, rounded to "
    "uint8); OpenCV's fixed-point INTER_LINEAR can differ by one grey level",
    "void (255) in the first annotation counts as background",
    "a constant positive propagated channel is left as is by the min-max (official: 0/0)",
]


@dataclass
class VideoProtocol:
    """Settings of the DAVIS label propagation (defaults: DINO's eval_video_segmentation.py).

    Attributes:
        short_side: the frames' short side after resizing (DINO: 480).
        multiple: the long side is floored to a multiple of this (DINO: 64); with
            ``short_side`` it must be a multiple of the backbone's patch size.
        n_last_frames: previous frames in the context besides the first (DINO: 7).
        temperature: affinity temperature on cosine similarities (DINO: 0.1).
        topk: context patches kept per target patch (DINO: 5).
        neighbourhood: square window radius in patches (``size_mask_neighborhood``, DINO:
            12; 0 = the whole frame).
        std_typo: normalise with DINO's std (0.228, 0.224, 0.225) (True, as the published
            numbers) or ImageNet's (0.229, ...).
        bound_th: boundary tolerance of F, a fraction of the diagonal (DAVIS: 0.008).
        batch_size: frames per extractor call.
    """

    short_side: int = 480
    multiple: int = 64
    n_last_frames: int = 7
    temperature: float = 0.1
    topk: int = 5
    neighbourhood: int = 12
    std_typo: bool = True
    bound_th: float = 0.008
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_fields(
            self,
            ints=dict(
                short_side=1, multiple=1, n_last_frames=0, topk=1, neighbourhood=0, batch_size=1
            ),
            positive=("temperature", "bound_th"),
            bools=("std_typo",),
        )

    @classmethod
    def for_scenes(cls, image_size: int = 96, **overrides: Any) -> VideoProtocol:
        """CPU preset on the synthetic videos: square frames at ``image_size`` (a multiple of
        the patch size; ``multiple = image_size`` keeps them square), a 4-patch window (the
        official 12 covers a whole 12x12 grid)."""
        base = cls(short_side=image_size, multiple=image_size, neighbourhood=4, batch_size=16)
        return replace(base, **overrides)

    @property
    def std(self) -> tuple[float, float, float]:
        return DINO_STD if self.std_typo else IMAGENET_STD


def frame_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """DINO's ``read_frame`` size: the short side to ``short_side``, the long side floored
    to a multiple of ``multiple`` (computed in floats as the script does)."""
    if height > width:
        return int((short_side * height / width) // multiple * multiple), short_side
    return short_side, int((short_side * width / height) // multiple * multiple)


def preprocess_frames(frames: Tensor, size: tuple[int, int], std: tuple[float, ...]) -> Tensor:
    """uint8 ``[T, 3, H, W]`` -> normalised float ``[T, 3, h, w]`` (bilinear, rounded to uint8
    as OpenCV's uint8 resize, then /255 and mean/std)."""
    x = frames.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255)
    return normalize(x / 255.0, IMAGENET_MEAN, std)


def _first_labels(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Frame-0 ids -> one-hot ``[C, h, w]`` on the patch grid (PIL nearest), C = max + 1."""
    ids = mask.long().clone()
    ids[ids == 255] = 0
    small = resize_label(ids, grid, rule="pil")
    return F.one_hot(small, int(small.max()) + 1).permute(2, 0, 1).float()


def _features(extractor: Extractor, frames: Tensor, p: VideoProtocol, device: Any) -> Tensor:
    out = []
    for start in range(0, len(frames), p.batch_size):
        out.append(extract_features(extractor, frames[start : start + p.batch_size].to(device)))
    return torch.cat(out)


def segment_sequence(
    extractor: Extractor, item: dict[str, Any], p: VideoProtocol, device: Any
) -> np.ndarray:
    """Predicted object ids ``uint8 [T, H, W]`` of one sequence (frame 0 = its annotation)."""
    frames, masks = item["frames"], item["masks"]
    height, width = frames.shape[-2:]
    size = frame_size(int(height), int(width), p.short_side, p.multiple)
    patch = int(getattr(extractor, "patch_size", 0) or 0)
    if not patch or min(size) < patch or size[0] % patch or size[1] % patch:
        raise ConfigError(
            f"video: frames resized to {size[1]}x{size[0]} (short_side={p.short_side}, "
            f"multiple={p.multiple}) are not a multiple of the backbone's patch size {patch}; "
            "choose short_side and multiple divisible by it"
        )
    feats = _features(extractor, preprocess_frames(frames, size, p.std), p, device)
    grid = (size[0] // patch, size[1] // patch)
    if tuple(feats.shape[1:3]) != grid:
        raise ValueError(f"extractor returned a {tuple(feats.shape[1:3])} grid, expected {grid}")
    first = _first_labels(masks[0], grid).to(feats.device)
    preds = [masks[0].numpy().astype(np.uint8)]
    soft_frames = propagate_video(
        feats.unbind(0),
        first,
        n_last_frames=p.n_last_frames,
        temperature=p.temperature,
        topk=p.topk,
        neighbourhood=p.neighbourhood,
    )
    for soft in soft_frames:
        pred = soft_to_mask(soft, patch, (int(height), int(width)))
        preds.append(pred.cpu().numpy().astype(np.uint8))
    return np.stack(preds)


@torch.no_grad()
def evaluate_video(
    extractor: Extractor,
    videos: Any,
    settings: VideoProtocol,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Propagate each sequence's first mask and score it with DAVIS J and F.

    Args:
        extractor: ``images [B, 3, H, W] -> patches [B, h, w, D]`` with ``patch_size``.
        videos: a dataset of sequences (``{"name", "frames", "masks"}`` items).
        settings: :class:`VideoProtocol`.

    Returns:
        ``J&F-Mean``, ``J-Mean``, ``J-Recall``, ``J-Decay``, ``F-Mean``, ``F-Recall``,
        ``F-Decay`` (objects pooled), ``per_sequence`` (each: its objects' J and F
        statistics and means), ``per_object`` (``<seq>_<k>``: J-Mean, F-Mean, as the
        official CSV), counts and ``differences_from_official``.
    """
    per_sequence: dict[str, list[dict[str, Any]]] = {}
    rows = tqdm(range(len(videos)), desc="video sequences", disable=not progress)
    with eval_mode(extractor):
        for i in rows:
            item = videos[i]
            preds = segment_sequence(extractor, item, settings, device)
            gt = item["masks"].numpy()
            per_sequence[item["name"]] = score_sequence(gt, preds, settings.bound_th)
    result: dict[str, Any] = dict(aggregate(per_sequence))
    result["per_sequence"] = {
        name: {
            "J-Mean": float(np.mean([o["J"]["mean"] for o in objs])) if objs else None,
            "F-Mean": float(np.mean([o["F"]["mean"] for o in objs])) if objs else None,
            "objects": {str(o["object"]): {"J": o["J"], "F": o["F"]} for o in objs},
        }
        for name, objs in per_sequence.items()
    }
    result["per_object"] = {
        f"{name}_{o['object']}": {"J-Mean": o["J"]["mean"], "F-Mean": o["F"]["mean"]}
        for name, objs in per_sequence.items()
        for o in objs
    }
    result["num_sequences"] = len(per_sequence)
    result["num_objects"] = len(result["per_object"])
    result["differences_from_official"] = DIFFERENCES
    return result


def describe_video(p: VideoProtocol) -> str:
    """The settings of a label-propagation run in one line (printed beside every number)."""
    window = "whole frame" if p.neighbourhood == 0 else f"window {p.neighbourhood}"
    return (
        f"short side {p.short_side}, long side floored to x{p.multiple}; first + "
        f"{p.n_last_frames} previous frames, T={p.temperature:g}, top-{p.topk}, {window}; "
        f"std ({p.std[0]:g}, {p.std[1]:g}, {p.std[2]:g}); F tolerance {p.bound_th:g}"
    )


def summarize_video(p: VideoProtocol, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows: J&F-Mean, J-Mean and F-Mean, objects pooled (as davis2017-evaluation)."""
    pooled = f"{results.get('num_objects', 0)} objects pooled"
    return [
        {"result": key, "metric": "J&F", "miou": results.get(key), "std": None, "matching": pooled}
        for key in ("J&F-Mean", "J-Mean", "F-Mean")
    ]
