"""Settings of ``densessl finetune seg``: one dataclass, a published recipe per decoder.

Both recipes share mmseg's ADE20K data pipeline (the SelfPatch config's
``_base_/datasets/ade20k.py`` and Segmenter's ``segm/data/config/ade20k.py`` are the same):
keep-ratio resize to scale (2048, 512) x a ratio in [0.5, 2], a 512 random crop whose
largest class covers at most 75 % (``cat_max_ratio``), a horizontal flip (p 0.5), photometric
distortion, padding to 512 with label 255; test images are resized (keep ratio) to the
same scale.

**decoder=linear** (LOCA's README: "linear decoder", Segmenter's recipe;
rstrudel/segmenter @20d1bfa):

* SGD, momentum 0.9 (``segm/train.py``: ``momentum=0.9``), Nesterov (timm's ``opt="sgd"``
  is Nesterov SGD, ``timm/optim``), weight decay 0 (``--weight-decay`` default 0.0).
* lr 1e-3, batch 8, 64 epochs, crop 512, window 512 / stride 512 (``segm/config.yml``,
  ``dataset.ade20k``); 64 epochs of the 20,210 training images at batch 8 are ~161.7k
  iterations, the "160k iterations" of the Segmenter paper (Strudel et al., ICCV 2021,
  Sec. 4.1), which we use.
* Polynomial decay power 0.9 to ``min_lr`` 1e-5, no warm-up (``segm/train.py``:
  ``poly_power=0.9``, ``min_lr=1e-5``, ``iter_warmup=0.0``); drop path 0.1
  (``--drop-path`` default 0.1); sliding-window inference (``segm/model/utils.py``).

**decoder=semfpn** (alinlab/SelfPatch @81aef14,
``segmentation/configs/semfpn_vit-s16_512x512_40k_ade20k.py``):

* Blocks 2/5/8/11 (``out_indices``), no final LayerNorm, drop path 0.1; FPN neck 256-d,
  FPNHead 128 channels with BatchNorm (SyncBN), dropout 0.1.
* AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 except ``pos_embed``,
  ``cls_token`` and every ``norm`` (``paramwise_cfg``); poly power 1.0 to 0 with 1,500
  linear warm-up iterations from ratio 1e-6; 40k iterations; 4 images x 4 GPUs = batch 16
  (``samples_per_gpu=4``; SelfPatch's README trains on 4 GPUs); whole-image inference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from densessl.errors import brief
from densessl.evaluation.checks import is_int, is_num

__all__ = ["FinetuneSettings", "ade20k_recipe", "scenes_recipe"]

DECODERS = ("linear", "semfpn")
OPTIMIZERS = ("sgd", "adamw")
EVAL_MODES = ("whole", "slide")
PYRAMIDS = ("none", "simple")


@dataclass
class FinetuneSettings:
    """One fine-tuning run (defaults: Segmenter's linear-decoder recipe on ADE20K).

    Attributes:
        decoder: ``linear`` (Segmenter) or ``semfpn`` (SelfPatch's Semantic FPN).
        iterations / batch_size: optimiser steps and images per step (global batch).
        crop_size: side of the square training crops (a multiple of the patch size).
        scale: ``(long, short)`` keep-ratio resize scale of train and test images (mmseg).
        ratio_range: training multiplier of ``scale`` drawn uniformly per image.
        cat_max_ratio: a crop is redrawn (up to 10 times) while one class covers more.
        photometric: mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue).
        optimizer: ``sgd`` or ``adamw``; lr: peak learning rate; momentum / nesterov: SGD;
            betas: AdamW; weight_decay: L2 / decoupled decay (0 on pos_embed, cls/reg
            tokens and norms).
        power / min_lr: poly schedule ``(lr - min_lr) (1 - it / iterations)^power + min_lr``.
        warmup_iters / warmup_ratio: mmcv's linear warm-up from ``warmup_ratio`` x lr.
        layer_decay: layer-wise lr decay (BEiT): block ``i`` gets ``decay^(depth - i)``,
            embeddings ``decay^(depth + 1)``, the decoder 1 (1.0: off).
        drop_path: stochastic depth of the last block (linear from 0 over the blocks).
        blocks: the blocks the decoder reads (semfpn: 4; empty = evenly spaced, 2/5/8/11 at
            depth 12); norm_blocks: apply the final LayerNorm to them.
        pyramid: semfpn inputs: ``none`` (SelfPatch's segmentation backbone: all four maps
            at the patch stride) or ``simple`` (XCiT / SelfPatch detection deconv-pool
            pyramid to strides 4-32).
        fpn_channels / head_channels / dropout: Semantic FPN widths and classifier dropout.
        eval_mode: ``whole`` image or ``slide`` windows of ``eval_window`` at
            ``eval_stride``; eval_ratios: test scales (x ``scale``); eval_flip: add flips.
        precision: ``auto`` / ``fp32`` / ``bf16`` / ``fp16`` (``train.precision`` rules).
        seed: decoder init, data order, crops, flips, dropout and drop path.
        checkpoint_every: iterations between checkpoints (a stop signal saves at once).
        log_every: iterations between history entries; num_workers: data loader workers.
    """

    decoder: str = "linear"
    iterations: int = 160_000
    batch_size: int = 8
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    power: float = 0.9
    min_lr: float = 1e-5
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    layer_decay: float = 1.0
    drop_path: float = 0.1
    blocks: tuple[int, ...] = (-1,)
    norm_blocks: bool = True
    pyramid: str = "none"
    fpn_channels: int = 256
    head_channels: int = 128
    dropout: float = 0.0
    eval_mode: str = "slide"
    eval_window: int = 512
    eval_stride: int = 512
    eval_ratios: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    num_workers: int = 4

    def __post_init__(self) -> None:
        self.scale = tuple(int(v) for v in self.scale)  # type: ignore[assignment]
        self.ratio_range = tuple(float(v) for v in self.ratio_range)  # type: ignore[assignment]
        self.betas = tuple(float(v) for v in self.betas)  # type: ignore[assignment]
        self.blocks = tuple(int(v) for v in self.blocks)  # type: ignore[assignment]
        self.eval_ratios = tuple(float(v) for v in self.eval_ratios)  # type: ignore[assignment]
        self._check("decoder", self.decoder in DECODERS, f"one of {DECODERS}")
        self._check("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}")
        self._check("eval_mode", self.eval_mode in EVAL_MODES, f"one of {EVAL_MODES}")
        self._check("pyramid", self.pyramid in PYRAMIDS, f"one of {PYRAMIDS}")
        ints = ("iterations", "batch_size", "crop_size", "fpn_channels", "head_channels")
        for name in (*ints, "eval_window", "eval_stride", "checkpoint_every", "log_every"):
            self._check(name, is_int(getattr(self, name), 1), "an integer >= 1")
        for name in ("warmup_iters", "seed", "num_workers"):
            self._check(name, is_int(getattr(self, name), 0), "an integer >= 0")
        self._check("lr", is_num(self.lr) and self.lr > 0, "> 0")
        self._check("min_lr", is_num(self.min_lr) and 0 <= self.min_lr <= self.lr, "in [0, lr]")
        self._check("power", is_num(self.power) and self.power > 0, "> 0")
        self._check("weight_decay", is_num(self.weight_decay) and self.weight_decay >= 0, ">= 0")
        self._check("momentum", is_num(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)")
        self._check("warmup_ratio", 0 < self.warmup_ratio <= 1, "in (0, 1]")
        self._check("layer_decay", 0 < self.layer_decay <= 1, "in (0, 1]")
        self._check("drop_path", 0 <= self.drop_path < 1, "in [0, 1)")
        self._check("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        self._check("cat_max_ratio", 0 < self.cat_max_ratio <= 1, "in (0, 1]")
        self._check("scale", len(self.scale) == 2 and min(self.scale) >= 1, "(long, short) >= 1")
        lo, hi = self.ratio_range if len(self.ratio_range) == 2 else (-1.0, -1.0)
        self._check("ratio_range", 0 < lo <= hi, "a pair 0 < lo <= hi")
        self._check("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "")
        self._check("eval_ratios", bool(self.eval_ratios) and min(self.eval_ratios) > 0, "> 0")
        if self.decoder == "semfpn":
            self._check("blocks", len(self.blocks) in (0, 4), "4 block indices (or empty)")
        else:
            self._check("blocks", len(self.blocks) == 1, "one block index (the linear decoder)")
        for name in ("photometric", "nesterov", "norm_blocks", "eval_flip"):
            self._check(name, isinstance(getattr(self, name), bool), "a bool")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            self._check("precision", False, "one of auto, fp32, bf16, fp16")

    def _check(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"finetune.{name} must be {what}, got {brief(getattr(self, name))}")

    def tapped_blocks(self, depth: int) -> list[int]:
        """The 0-based blocks the decoder reads in a ``depth``-block backbone."""
        if self.blocks:
            return [b + depth if b < 0 else b for b in self.blocks]
        return [max(0, (i + 1) * depth // 4 - 1) for i in range(4)]  # 2/5/8/11 at depth 12


def ade20k_recipe(decoder: str = "linear", **overrides: Any) -> FinetuneSettings:
    """The published recipe of ``decoder`` (see the module docstring for each value)."""
    if decoder == "semfpn":
        base = FinetuneSettings(
            decoder="semfpn", iterations=40_000, batch_size=16, optimizer="adamw", lr=6e-5,
            weight_decay=0.01, power=1.0, min_lr=0.0, warmup_iters=1500, warmup_ratio=1e-6,
            drop_path=0.1, blocks=(), norm_blocks=False, dropout=0.1, eval_mode="whole",
        )  # fmt: skip
        return replace(base, **overrides)
    return replace(FinetuneSettings(decoder=decoder), **overrides)


def scenes_recipe(
    decoder: str = "linear", image_size: int = 64, **overrides: Any
) -> FinetuneSettings:
    """CPU preset on the synthetic scenes: the recipe at the scenes' size, a short budget.

    Crops and windows are ``image_size``, the resize scale ``(4 image_size, image_size)``,
    100 iterations of batch 8, no photometric distortion, no drop path, fp32, no workers;
    the linear decoder's lr is raised to 0.01 and semfpn's warm-up shortened to 10 steps
    so that 100 steps learn something.
    """
    side = int(image_size)
    values: dict[str, Any] = {
        "iterations": 100, "batch_size": 8, "crop_size": side, "scale": (4 * side, side),
        "eval_window": side, "eval_stride": side, "photometric": False, "drop_path": 0.0,
        "precision": "fp32", "num_workers": 0, "checkpoint_every": 50, "log_every": 10,
    }  # fmt: skip
    if decoder == "semfpn":
        values.update(warmup_iters=10, lr=1e-3)
    else:
        values.update(lr=0.01)
    values.update(overrides)
    return ade20k_recipe(decoder, **values)
