"""Texture families of the synthetic scenes (see :mod:`densessl.data.scenes.dataset`).

A texture maps coordinates to a mix factor ``t`` in [0, 1]; the renderer paints
``colour0 + t * (colour1 - colour0)`` with two colours drawn at random per instance, so a texture
family is recognisable by its *pattern* only, never by its colour.

Coordinates are in units of the image side (a scene is the same picture at any resolution);
``px`` is the size of one pixel in those units and sets the width of the anti-aliased edges.
Every family has a ``sample`` function (parameters drawn from the scene generator, independent
of the resolution) and a ``render`` function (vectorised numpy, float32).

Thing textures (on objects, in object-local rotated coordinates) use periods of 4.5-9.5 px at
96 px. Stuff textures (large background regions, image coordinates) are either much coarser
(gradient, waves, clouds) or pixel-fine (grain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Params = dict[str, Any]
Sampler = Callable[[np.random.Generator], Params]
Renderer = Callable[[np.ndarray, np.ndarray, Params, float, np.random.Generator], np.ndarray]

_TWO_PI = np.float32(2.0 * np.pi)


def _soft(distance: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased step: 1 well inside (``distance`` > 0), 0 outside, linear over one pixel."""
    return np.clip(0.5 + distance * np.float32(1.0 / px), 0.0, 1.0)


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * u + s * v, c * v - s * u


def _wave_distance(x: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Signed distance (approximately) to the zero crossings of ``sin(2 pi x / period + phase)``."""
    return np.float32(period / (2.0 * np.pi)) * np.sin(x * np.float32(2.0 * np.pi / period) + phase)


def _base(rng: np.random.Generator, low: float, high: float) -> Params:
    return {
        "angle": float(rng.uniform(0.0, np.pi)),
        "period": float(rng.uniform(low, high)),
        "phase": float(rng.uniform(0.0, 2.0 * np.pi)),
    }


# ---------------------------------------------------------------- thing textures


def sample_stripes(rng: np.random.Generator) -> Params:
    """Parallel stripes, period 0.050-0.075 of the image side, any orientation."""
    return _base(rng, 0.050, 0.075)


def render_stripes(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Stripes along the rotated ``u`` axis."""
    a, _ = _rotate(u, v, p["angle"])
    return _soft(_wave_distance(a, p["period"], p["phase"]), px)


def sample_checker(rng: np.random.Generator) -> Params:
    """Checkerboard, cell side 0.035-0.050 (period 0.070-0.100), any orientation."""
    return _base(rng, 0.070, 0.100)


def render_checker(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Checkerboard: sign of the product of two perpendicular waves."""
    a, b = _rotate(u, v, p["angle"])
    da = _wave_distance(a, p["period"], p["phase"])
    db = _wave_distance(b, p["period"], 0.0)
    d = np.minimum(np.abs(da), np.abs(db))
    return _soft(np.copysign(d, da * db), px)


def sample_dots(rng: np.random.Generator) -> Params:
    """Square lattice of dots, period 0.060-0.085, dot radius 0.30-0.36 of the period."""
    p = _base(rng, 0.060, 0.085)
    p["radius"] = float(rng.uniform(0.30, 0.36))
    p["offset"] = (float(rng.random()), float(rng.random()))
    return p


def render_dots(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Dots: distance to the nearest lattice point, thresholded at the dot radius."""
    a, b = _rotate(u, v, p["angle"])
    period = np.float32(p["period"])
    fa = a / period + np.float32(p["offset"][0])
    fb = b / period + np.float32(p["offset"][1])
    fa -= np.floor(fa) + np.float32(0.5)
    fb -= np.floor(fb) + np.float32(0.5)
    d = np.float32(p["radius"]) - np.sqrt(fa * fa + fb * fb)
    return _soft(d * period, px)


def sample_grid(rng: np.random.Generator) -> Params:
    """Grid of thin lines, period 0.075-0.100, line width 0.24-0.30 of the period."""
    p = _base(rng, 0.075, 0.100)
    p["width"] = float(rng.uniform(0.24, 0.30))
    p["offset"] = (float(rng.random()), float(rng.random()))
    return p


def render_grid(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Grid: 1 on the lines of two perpendicular families, 0 in the cells."""
    a, b = _rotate(u, v, p["angle"])
    period = np.float32(p["period"])
    fa = a / period + np.float32(p["offset"][0])
    fb = b / period + np.float32(p["offset"][1])
    da = np.abs(fa - np.floor(fa + np.float32(0.5)))
    db = np.abs(fb - np.floor(fb + np.float32(0.5)))
    d = np.float32(p["width"] / 2) - np.minimum(da, db)
    return _soft(d * period, px)


def sample_zigzag(rng: np.random.Generator) -> Params:
    """Zigzag stripes: period 0.060-0.080, zig length 0.09-0.13, amplitude 0.35-0.5 of it."""
    p = _base(rng, 0.060, 0.080)
    p["zig"] = float(rng.uniform(0.09, 0.13))
    p["amplitude"] = float(rng.uniform(0.35, 0.5)) * p["zig"] / 2
    return p


def render_zigzag(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Stripes whose axis is displaced by a triangle wave along the stripes."""
    a, b = _rotate(u, v, p["angle"])
    x = b / np.float32(p["zig"])
    tri = np.float32(4.0) * np.abs(x - np.floor(x + np.float32(0.5))) - np.float32(1.0)
    a = a + np.float32(p["amplitude"]) * tri
    slope = 4.0 * p["amplitude"] / p["zig"]
    d = _wave_distance(a, p["period"], p["phase"]) * np.float32(1.0 / np.hypot(1.0, slope))
    return _soft(d, px)


def sample_concentric(rng: np.random.Generator) -> Params:
    """Concentric rings around a point near the object centre, period 0.045-0.065."""
    p = _base(rng, 0.045, 0.065)
    p["centre"] = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)))
    return p


def render_concentric(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Rings: a wave of the distance to the ring centre."""
    du = u - np.float32(p["centre"][0])
    dv = v - np.float32(p["centre"][1])
    r = np.sqrt(du * du + dv * dv)
    return _soft(_wave_distance(r, p["period"], p["phase"]), px)


# ---------------------------------------------------------------- stuff textures


def sample_gradient(rng: np.random.Generator) -> Params:
    """Smooth linear ramp over 0.5-1.2 of the image side, any direction."""
    return {
        "angle": float(rng.uniform(0.0, 2.0 * np.pi)),
        "length": float(rng.uniform(0.5, 1.2)),
        "centre": float(rng.uniform(0.3, 0.7)),
    }


def render_gradient(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Linear ramp from colour 0 to colour 1."""
    a, _ = _rotate(u - np.float32(0.5), v - np.float32(0.5), p["angle"])
    t = np.float32(0.5) + (a + np.float32(0.5 - p["centre"])) * np.float32(1.0 / p["length"])
    return np.clip(t, 0.0, 1.0)


def sample_grain(rng: np.random.Generator) -> Params:
    """Per-pixel noise between the two colours (strength 0.6-1.0)."""
    return {"strength": float(rng.uniform(0.6, 1.0))}


def render_grain(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Independent uniform noise per pixel (drawn from the per-pixel generator)."""
    noise = rng.random(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
    return np.float32(0.5) + (noise - np.float32(0.5)) * np.float32(p["strength"])


def sample_waves(rng: np.random.Generator) -> Params:
    """Wavy bands, period 0.14-0.22, bent by a sine of wavelength 0.3-0.6."""
    p = _base(rng, 0.14, 0.22)
    p["bend"] = float(rng.uniform(0.25, 0.5))
    p["wavelength"] = float(rng.uniform(0.3, 0.6))
    p["bend_phase"] = float(rng.uniform(0.0, 2.0 * np.pi))
    return p


def render_waves(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth sinusoidal bands whose phase wanders along them."""
    a, b = _rotate(u, v, p["angle"])
    bend = np.float32(p["bend"] * p["period"]) * np.sin(
        b * np.float32(2.0 * np.pi / p["wavelength"]) + np.float32(p["bend_phase"])
    )
    return np.float32(0.5) + np.float32(0.5) * np.sin(
        (a + bend) * np.float32(2.0 * np.pi / p["period"]) + np.float32(p["phase"])
    )


_CLOUD_GRID = 6


def sample_clouds(rng: np.random.Generator) -> Params:
    """Smooth blobs: value noise on a 6x6 lattice over the image."""
    return {"values": rng.random((_CLOUD_GRID, _CLOUD_GRID)).astype(np.float32)}


def _interp_matrix(x: np.ndarray, n: int) -> np.ndarray:
    """[len(x), n] smooth (smoothstep-weighted) linear interpolation weights on n nodes."""
    pos = np.clip(x, 0.0, 1.0) * (n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)
    w = np.zeros((len(x), n), dtype=np.float32)
    rows = np.arange(len(x))
    w[rows, i0] = 1.0 - f
    w[rows, i0 + 1] = f
    return w


def render_clouds(
    u: np.ndarray, v: np.ndarray, p: Params, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Value noise; ``u`` must be a row [1, W] and ``v`` a column [H, 1] (image coordinates)."""
    wy = _interp_matrix(v[:, 0], _CLOUD_GRID)
    wx = _interp_matrix(u[0, :], _CLOUD_GRID)
    t = wy @ p["values"] @ wx.T
    lo, hi = float(p["values"].min()), float(p["values"].max())
    return (t - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-3))


THING_TEXTURES: dict[str, tuple[Sampler, Renderer]] = {
    "stripes": (sample_stripes, render_stripes),
    "checker": (sample_checker, render_checker),
    "dots": (sample_dots, render_dots),
    "grid": (sample_grid, render_grid),
    "zigzag": (sample_zigzag, render_zigzag),
    "concentric": (sample_concentric, render_concentric),
}
"""Object textures by name: (sample parameters, render mix factor)."""

STUFF_TEXTURES: dict[str, tuple[Sampler, Renderer]] = {
    "gradient": (sample_gradient, render_gradient),
    "grain": (sample_grain, render_grain),
    "waves": (sample_waves, render_waves),
    "clouds": (sample_clouds, render_clouds),
}
"""Background-region textures by name, in class-id order."""
