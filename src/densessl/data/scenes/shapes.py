"""Signed-distance functions of the shape families of the synthetic scenes.

Every function takes object-local coordinates ``(u, v)`` in pixels (centred on the object and
already rotated) and the object's radius ``r`` in pixels, and returns the signed distance to the
outline in pixels (negative inside). Exact distances follow Inigo Quilez's 2D SDF formulas
(https://iquilezles.org/articles/distfunctions2d/); unions and differences (cross, moon) are
exact outside and a tight bound inside. The renderer only relies on the distance being exact
to well under a pixel near the outline, where coverage and ambiguous labels are decided.

All shapes fit in the disc of radius ``r`` around the object centre and have areas
of 1.3 r² (triangle) to 2.5 r² (ring), so size says little about the class.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Sdf = Callable[[np.ndarray, np.ndarray, float], np.ndarray]

_F = np.float32


def _box(u: np.ndarray, v: np.ndarray, bu: float, bv: float) -> np.ndarray:
    du = np.abs(u) - _F(bu)
    dv = np.abs(v) - _F(bv)
    outside = np.hypot(np.maximum(du, 0.0), np.maximum(dv, 0.0))
    return outside + np.minimum(np.maximum(du, dv), 0.0)


def sdf_disc(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Disc of radius 0.85 r."""
    return np.hypot(u, v) - _F(0.85 * r)


def sdf_square(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Square of half-side 0.68 r (corners at 0.96 r)."""
    return _box(u, v, 0.68 * r, 0.68 * r)


def sdf_triangle(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Equilateral triangle with circumradius r."""
    k = _F(np.sqrt(3.0))
    half = _F(r * np.sqrt(3.0) / 2.0)
    x = np.abs(u) - half
    y = v + half / k
    flip = x + k * y > 0
    x, y = (
        np.where(flip, (x - k * y) * _F(0.5), x),
        np.where(flip, (-k * x - y) * _F(0.5), y),
    )
    x = x - np.clip(x, -2.0 * half, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def sdf_hexagon(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Regular hexagon with circumradius 0.95 r."""
    kx, ky, kz = _F(-0.866025404), _F(0.5), _F(0.577350269)
    inner = _F(0.95 * r * 0.866025404)
    x, y = np.abs(u), np.abs(v)
    dot = np.minimum(kx * x + ky * y, 0.0) * _F(2.0)
    x = x - dot * kx
    y = y - dot * ky
    x = x - np.clip(x, -kz * inner, kz * inner)
    y = y - inner
    return np.hypot(x, y) * np.sign(y)


def sdf_star(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Five-pointed star, outer radius r, inner radius 0.5 r."""
    k1x, k1y = _F(0.809016994375), _F(-0.587785252292)
    k2x, k2y = -k1x, k1y
    x, y = np.abs(u), -v
    d1 = np.maximum(k1x * x + k1y * y, 0.0) * _F(2.0)
    x, y = x - d1 * k1x, y - d1 * k1y
    d2 = np.maximum(k2x * x + k2y * y, 0.0) * _F(2.0)
    x, y = x - d2 * k2x, y - d2 * k2y
    x = np.abs(x)
    y = y - _F(r)
    rf = 0.5
    bax, bay = _F(-rf * k1y), _F(rf * k1x - 1.0)
    h = np.clip((x * bax + y * bay) * _F(1.0 / (bax * bax + bay * bay)), 0.0, _F(r))
    return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def sdf_cross(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Plus sign: two bars of half-length 0.92 r and half-width 0.34 r."""
    return np.minimum(_box(u, v, 0.92 * r, 0.34 * r), _box(u, v, 0.34 * r, 0.92 * r))


def sdf_ring(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Annulus between radii 0.45 r and r."""
    return np.abs(np.hypot(u, v) - _F(0.725 * r)) - _F(0.275 * r)


def sdf_moon(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Crescent: a disc of radius r minus a disc of radius 0.8 r shifted by 0.55 r."""
    outer = np.hypot(u, v) - _F(r)
    bite = np.hypot(u - _F(0.55 * r), v) - _F(0.8 * r)
    return np.maximum(outer, -bite)


SHAPES: dict[str, Sdf] = {
    "disc": sdf_disc,
    "square": sdf_square,
    "triangle": sdf_triangle,
    "star": sdf_star,
    "cross": sdf_cross,
    "hexagon": sdf_hexagon,
    "ring": sdf_ring,
    "moon": sdf_moon,
}
"""Shape families by name."""
