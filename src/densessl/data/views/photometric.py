"""Photometric augmentation of one crop (never moves a pixel, so crop geometry stays valid).

DINO's recipe per view kind: colour jitter (p=0.8, brightness 0.4, contrast 0.4, saturation
0.2, hue 0.1, random order), grayscale (p=0.2), Gaussian blur with sigma ~ U(0.1, 2.0)
(p = 1.0 / 0.1 / 0.5 for the first global / other globals / locals) and solarize (p = 0 / 0.2
/ 0). Leopart uses jitter (0.8, 0.8, 0.8, 0.2), blur p=0.5 everywhere and no solarize; the
Leopart presets set those numbers. All randomness comes from the caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

VIEW_KINDS = ("global1", "global2", "local")


@dataclass
class PhotometricConfig:
    """Photometric augmentation settings.

    Attributes:
        enabled: False turns every photometric op off (geometry only).
        jitter_prob: probability of colour jitter.
        brightness, contrast, saturation: jitter strengths (factor ~ U(1-s, 1+s)).
        hue: hue shift ~ U(-hue, hue), in turns (0.5 = half the colour wheel).
        grayscale_prob: probability of converting to 3-channel grayscale.
        blur_prob: blur probability for (first global, other globals, locals).
        blur_sigma: range of the Gaussian sigma in output pixels (PIL's "radius").
        solarize_prob: solarize probability for (first global, other globals, locals).
    """

    enabled: bool = True
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float, float] = (0.0, 0.2, 0.0)

    def __post_init__(self) -> None:
        probabilities = {
            "jitter_prob": [self.jitter_prob],
            "grayscale_prob": [self.grayscale_prob],
            "blur_prob": list(self.blur_prob),
            "solarize_prob": list(self.solarize_prob),
        }
        for name, values in probabilities.items():
            if any(not 0 <= p <= 1 for p in values):
                raise ValueError(f"views.photometric.{name} must be in [0, 1], got {values}")
        if len(self.blur_prob) != 3 or len(self.solarize_prob) != 3:
            raise ValueError(
                "views.photometric.blur_prob and solarize_prob take three values: "
                "(first global, other globals, locals)"
            )
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("views.photometric: jitter strengths must be >= 0 and hue in [0, 0.5]")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(
                f"views.photometric.blur_sigma must be 0 < lo <= hi: {self.blur_sigma}"
            )


def _coin(generator: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=generator)) < p


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _color_jitter(image: Tensor, cfg: PhotometricConfig, generator: torch.Generator) -> Tensor:
    order = torch.randperm(4, generator=generator).tolist()
    for op in order:
        if op == 0 and cfg.brightness > 0:
            factor = _uniform(generator, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
            image = TF.adjust_brightness(image, factor)
        elif op == 1 and cfg.contrast > 0:
            factor = _uniform(generator, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
            image = TF.adjust_contrast(image, factor)
        elif op == 2 and cfg.saturation > 0:
            factor = _uniform(generator, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
            image = TF.adjust_saturation(image, factor)
        elif op == 3 and cfg.hue > 0:
            image = TF.adjust_hue(image, _uniform(generator, -cfg.hue, cfg.hue))
    return image


def augment_photometric(
    image: Tensor, cfg: PhotometricConfig, kind: str, generator: torch.Generator
) -> Tensor:
    """Augment one crop.

    Args:
        image: ``uint8`` or float ``[3, h, w]`` crop.
        cfg: settings.
        kind: ``"global1"``, ``"global2"`` or ``"local"`` (selects blur/solarize odds).
        generator: source of randomness.

    Returns:
        float32 ``[3, h, w]`` in ``[0, 1]``.
    """
    if kind not in VIEW_KINDS:
        raise ValueError(f"view kind must be one of {VIEW_KINDS}, got {kind!r}")
    image = TF.to_dtype(image, torch.float32, scale=True)
    if not cfg.enabled:
        return image
    slot = VIEW_KINDS.index(kind)
    if _coin(generator, cfg.jitter_prob):
        image = _color_jitter(image, cfg, generator)
    if _coin(generator, cfg.grayscale_prob):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if _coin(generator, cfg.blur_prob[slot]):
        sigma = _uniform(generator, *cfg.blur_sigma)
        radius = max(1, math.ceil(3 * sigma))
        kernel = min(2 * radius + 1, 2 * ((min(image.shape[-2:]) - 1) // 2) + 1)
        if kernel >= 3:
            image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if _coin(generator, cfg.solarize_prob[slot]):
        image = TF.solarize(image, 0.5)
    return image.clamp(0, 1)
