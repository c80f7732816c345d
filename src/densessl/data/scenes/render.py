"""Rendering of one synthetic scene: classes, :class:`SceneConfig`, :func:`render_scene`.

The public entry point is :mod:`densessl.data.scenes.dataset`, which re-exports everything here; see
its docstring for what a scene is, the class-id order and the determinism guarantee.

Rendering is vectorised numpy on signed-distance fields: the background regions are painted
over the whole image, each object only over its bounding square, back to front. Coverage of
a pixel is ``clip(0.5 - sd, 0, 1)`` (sd = signed distance of its centre to the outline, in
pixels), which anti-aliases the image; a pixel whose centre lies within ``_AMBIGUOUS_PX`` of
an outline separating two different classes is labelled 255.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.ndimage import gaussian_filter

from densessl.data.scenes.shapes import SHAPES
from densessl.data.scenes.textures import STUFF_TEXTURES, THING_TEXTURES
from densessl.errors import brief

GENERATOR_VERSION = 1
"""Bumped whenever the pictures a (seed, index, config) produces change."""

IGNORE_INDEX = 255

THING_CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "stripes"),
    ("disc", "checker"),
    ("square", "dots"),
    ("square", "stripes"),
    ("triangle", "checker"),
    ("star", "dots"),
    ("cross", "grid"),
    ("hexagon", "zigzag"),
    ("ring", "concentric"),
    ("triangle", "zigzag"),
    ("hexagon", "dots"),
    ("moon", "stripes"),
)
"""(shape, texture) of each thing class of the ``"shared-cues"`` class set, in id order; a
config with T thing classes uses the first T. Classes share shapes and textures (three discs or
squares, two of each texture), so telling them apart needs both cues."""

DISTINCT_CUE_CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "stripes"),
    ("square", "dots"),
    ("triangle", "checker"),
    ("cross", "grid"),
    ("hexagon", "zigzag"),
    ("ring", "concentric"),
)
"""Thing classes of the ``"distinct-cues"`` class set: no shape or texture is shared, so a
patch's texture alone names its class (easier at 8-px patches than ``THING_CLASSES``)."""

CLASS_SETS: dict[str, tuple[tuple[str, str], ...]] = {
    "shared-cues": THING_CLASSES,
    "distinct-cues": DISTINCT_CUE_CLASSES,
}

STUFF_CLASSES: tuple[str, ...] = tuple(STUFF_TEXTURES)
"""Texture of each stuff class; a config with S stuff classes uses the first S."""

_AMBIGUOUS_PX = 0.5  # |signed distance| below this (pixels) -> label 255

PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (40, 170, 70),
    (240, 210, 40),
    (30, 100, 210),
    (240, 130, 30),
    (140, 40, 170),
    (35, 35, 35),
    (225, 225, 225),
)
"""The eight colours of ``SceneConfig(colours="palette")``, shared by every class."""

COLOUR_MODES: tuple[str, ...] = ("instance", "palette", "gray")
"""How the two colours of a region are drawn: see :class:`SceneConfig`."""


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        size: image side in pixels (64-512); scenes are square.
        num_thing_classes: object classes, the first T of the class set (1-12; capped at the
            set's size, so the default 8 gives 6 classes with ``"distinct-cues"``).
        num_stuff_classes: background classes, the first S of ``STUFF_CLASSES`` (1-4).
        min_objects / max_objects: objects per image, uniform in this range (0-12; 0/0 gives
            stuff-only scenes).
        max_stuff_regions: background regions per image, uniform in 1..this (1-3, capped
            at ``num_stuff_classes``; regions take distinct stuff classes).
        noise: largest std of the additive Gaussian pixel noise (0-255 scale); each image
            draws its own std uniformly in [0, noise]. 0 disables.
        blur: largest Gaussian blur sigma in pixels at 96 px (scaled with ``size``); each image
            draws its own in [0, blur]. 0 disables. Labels are geometric, blur does not move
            them.
        min_radius / max_radius: object radius as a fraction of the image side.
        class_set: which thing classes (a key of ``CLASS_SETS``): ``"shared-cues"`` (the
            default, up to 12 classes that share shapes and textures) or ``"distinct-cues"``
            (up to 6 classes, each with its own shape and texture).
        colours: how the two colours of every stuff region and object are drawn, always
            independently of its class: ``"instance"`` (the default: any two RGB colours at
            least 110 apart, so colour names an instance), ``"palette"`` (two colours of the
            eight in ``PALETTE``, at least 110 apart: the same few recur in every scene) or
            ``"gray"`` (two gray levels at least 64 apart: no hue at all).
    """

    size: int = 96
    num_thing_classes: int = 8
    num_stuff_classes: int = 3
    min_objects: int = 1
    max_objects: int = 5
    max_stuff_regions: int = 3
    noise: float = 6.0
    blur: float = 0.6
    min_radius: float = 0.12
    max_radius: float = 0.28
    class_set: str = "shared-cues"
    colours: str = "instance"

    def __post_init__(self) -> None:
        if not isinstance(self.class_set, str) or self.class_set not in CLASS_SETS:
            raise ValueError(
                f"SceneConfig.class_set must be one of {sorted(CLASS_SETS)}, "
                f"got {brief(self.class_set)}"
            )
        if not isinstance(self.colours, str) or self.colours not in COLOUR_MODES:
            raise ValueError(
                f"SceneConfig.colours must be one of {list(COLOUR_MODES)}, "
                f"got {brief(self.colours)}"
            )
        for f in fields(self):
            if f.name in ("class_set", "colours"):
                continue
            value = getattr(self, f.name)
            is_int = f.type in ("int", int)
            kind = int if is_int else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "an integer" if is_int else "a number"
                raise ValueError(f"SceneConfig.{f.name} must be {what}, got {brief(value)}")
        _check("size", self.size, 64, 512)
        _check("num_thing_classes", self.num_thing_classes, 1, len(THING_CLASSES))
        available = len(CLASS_SETS[self.class_set])
        if self.num_thing_classes > available:  # e.g. the default 8 with "distinct-cues"
            object.__setattr__(self, "num_thing_classes", available)
        _check("num_stuff_classes", self.num_stuff_classes, 1, len(STUFF_CLASSES))
        _check("min_objects", self.min_objects, 0, 12)
        _check("max_objects", self.max_objects, self.min_objects, 12)
        _check("max_stuff_regions", self.max_stuff_regions, 1, 3)
        _check("noise", self.noise, 0.0, 50.0)
        _check("blur", self.blur, 0.0, 3.0)
        _check("min_radius", self.min_radius, 0.03, 0.4)
        _check("max_radius", self.max_radius, self.min_radius, 0.4)

    @property
    def thing_classes(self) -> tuple[tuple[str, str], ...]:
        """(shape, texture) of the thing classes in use, in id order (after the stuff)."""
        return CLASS_SETS[self.class_set][: self.num_thing_classes]

    @property
    def num_classes(self) -> int:
        """Stuff plus thing classes (255 is not counted)."""
        return self.num_stuff_classes + self.num_thing_classes


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"SceneConfig.{name} must be in [{low}, {high}], got {value!r}")


def class_names(config: SceneConfig | None = None) -> list[str]:
    """Names in id order: ``stuff/<texture>`` then ``thing/<shape>-<texture>``."""
    config = config or SceneConfig()
    stuff = [f"stuff/{name}" for name in STUFF_CLASSES[: config.num_stuff_classes]]
    things = [f"thing/{s}-{t}" for s, t in config.thing_classes]
    return stuff + things


def region_colours(
    rng: np.random.Generator, mode: str, recolour: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The two colours of one region or object, far enough apart that its texture shows,
    drawn as ``SceneConfig.colours`` says. The any-RGB pair is always drawn from ``rng``, so
    the layout (drawn from ``rng`` too) is the same in every mode; the palette and gray
    pairs come from their own stream ``recolour``."""
    c0 = rng.uniform(0.0, 255.0, 3)
    while True:
        c1 = rng.uniform(0.0, 255.0, 3)
        if np.linalg.norm(c1 - c0) >= 110.0:
            break
    if mode == "palette":
        while True:
            p0, p1 = (
                np.asarray(PALETTE[k], np.float32) for k in recolour.integers(len(PALETTE), size=2)
            )
            if np.linalg.norm(p1 - p0) >= 110.0:
                return p0, p1
    if mode == "gray":
        g0 = recolour.uniform(0.0, 255.0)
        while True:
            g1 = recolour.uniform(0.0, 255.0)
            if abs(g1 - g0) >= 64.0:
                return np.full(3, g0, np.float32), np.full(3, g1, np.float32)
    return c0.astype(np.float32), c1.astype(np.float32)


class _Canvas:
    """Image, labels and ambiguity mask being painted, back to front."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = np.empty((size, size, 3), np.float32)
        self.label = np.empty((size, size), np.uint8)
        self.ambiguous = np.zeros((size, size), bool)

    def paint(
        self, window: tuple[slice, slice], sd: np.ndarray, colour: np.ndarray, cls: int
    ) -> None:
        """Composite ``colour`` [h, w, 3] with coverage from signed distance ``sd`` [h, w] (px)."""
        cover = np.clip(np.float32(0.5) - sd, 0.0, 1.0)
        img = self.image[window]
        img += cover[..., None] * (colour - img)
        label, amb = self.label[window], self.ambiguous[window]
        edge = np.abs(sd) < _AMBIGUOUS_PX
        # An edge stays clean only over a clean pixel of the same class.
        amb |= edge & ((label != cls) | amb)
        amb &= ~(sd <= -_AMBIGUOUS_PX)
        label[sd < 0] = cls


def _stuff_region_sd(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int
) -> np.ndarray:
    """Signed distance (px) of a wavy half-plane or a wobbly blob (negative inside)."""
    if rng.random() < 0.6:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        nx, ny = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        px, py = rng.uniform(0.25, 0.75, 2) * size
        amp = rng.uniform(0.0, 0.06) * size
        freq = 2.0 * np.pi / (rng.uniform(0.4, 0.9) * size)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        along = -ny * (x - px) + nx * (y - py)
        g = nx * (x - px) + ny * (y - py) + np.float32(amp) * np.sin(along * freq + phase)
        slope = np.float32(amp * freq) * np.cos(along * freq + phase)
        return g / np.sqrt(1.0 + slope * slope)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    radius = rng.uniform(0.2, 0.4) * size
    lobes = int(rng.integers(2, 6))
    amp = rng.uniform(0.0, 0.15) * radius
    phase = rng.uniform(0.0, 2.0 * np.pi)
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    r = np.hypot(dx, dy)
    theta = lobes * np.arctan2(dy, dx) + np.float32(phase)
    wobble = np.float32(amp) * np.sin(theta)
    slope = np.float32(amp * lobes) * np.cos(theta) / np.maximum(r, 1.0)
    return (r - np.float32(radius) - wobble) / np.sqrt(1.0 + slope * slope)


def render_scene(
    index: int, seed: int, config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw scene ``index`` of ``seed``.

    Returns:
        image: uint8 [H, W, 3] RGB.
        label: uint8 [H, W] class ids (see :func:`class_names`), 255 on ambiguous pixels.
    """
    config = config or SceneConfig()
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    rng = np.random.default_rng([seed, index, 0])
    pix = np.random.default_rng([seed, index, 1])
    recolour = np.random.default_rng([seed, index, 2])
    size = config.size
    canvas = _Canvas(size)
    coords = (np.arange(size, dtype=np.float32) + np.float32(0.5)).reshape(1, size)
    x, y = coords, coords.reshape(size, 1)
    u, v = x / np.float32(size), y / np.float32(size)
    px = 1.0 / size

    # Background: region 0 fills the image, the others are painted over it.
    regions = int(rng.integers(1, min(config.max_stuff_regions, config.num_stuff_classes) + 1))
    stuff = rng.choice(config.num_stuff_classes, size=regions, replace=False)
    for k, cls in enumerate(stuff):
        sample, render = STUFF_TEXTURES[STUFF_CLASSES[cls]]
        c0, c1 = region_colours(rng, config.colours, recolour)
        t = render(u, v, sample(rng), px, pix)
        colour = c0 + t[..., None] * (c1 - c0)
        if k == 0:
            canvas.image[:] = colour
            canvas.label[:] = cls
            continue
        canvas.paint((slice(None), slice(None)), _stuff_region_sd(rng, x, y, size), colour, cls)

    # Things, back to front.
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(count):
        thing = int(rng.integers(config.num_thing_classes))
        shape, texture = config.thing_classes[thing]
        cx, cy = rng.uniform(0.08, 0.92, 2)
        radius = np.exp(rng.uniform(np.log(config.min_radius), np.log(config.max_radius)))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        sample, render = THING_TEXTURES[texture]
        params = sample(rng)
        c0, c1 = region_colours(rng, config.colours, recolour)
        r_px, cx_px, cy_px = radius * size, cx * size, cy * size
        reach = r_px + 1.5
        x0, x1 = max(0, int(cx_px - reach)), min(size, int(np.ceil(cx_px + reach)))
        y0, y1 = max(0, int(cy_px - reach)), min(size, int(np.ceil(cy_px + reach)))
        if x0 >= x1 or y0 >= y1:
            continue
        dx = x[:, x0:x1] - np.float32(cx_px)
        dy = y[y0:y1] - np.float32(cy_px)
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        lu, lv = c * dx + s * dy, c * dy - s * dx
        sd = SHAPES[shape](lu, lv, r_px)
        scale = np.float32(1.0 / size)
        t = render(lu * scale, lv * scale, params, px, pix)
        colour = c0 + t[..., None] * (c1 - c0)
        cls = config.num_stuff_classes + thing
        canvas.paint((slice(y0, y1), slice(x0, x1)), sd, colour, cls)

    image = canvas.image
    sigma = rng.uniform(0.0, config.blur) * size / 96.0
    if sigma > 0.1:
        image = gaussian_filter(image, sigma=(sigma, sigma, 0.0), mode="nearest", truncate=3.0)
    std = rng.uniform(0.0, config.noise)
    if std > 0.0:  # gray scenes get gray noise: no hue anywhere
        shape = (size, size, 1) if config.colours == "gray" else image.shape
        image = image + pix.standard_normal(shape, dtype=np.float32) * np.float32(std)
    image = np.clip(image + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
    label = np.where(canvas.ambiguous, np.uint8(IGNORE_INDEX), canvas.label)
    return image, label
