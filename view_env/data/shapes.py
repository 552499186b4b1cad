"""Shapes: a deterministic procedural data set of cluttered multi-object scenes, written in the COCO 2017 layout.

Each image shows 2 to 8 shapes on a background of several independently coloured regions, with occlusion in
painter's order, visible-pixel boxes and 5 template captions derived from the scene geometry.

Categories are shapes, never colours: the 10 :data:`SHAPES` are circle, square, triangle, star, hexagon, cross,
ring, crescent, heart and arrow. The first six are the classic synthetic-scene shapes; the last four were added
because each differs from all the others in a way that survives 16 to 32 px: a ring is the only shape with a hole,
a crescent the only concave round one, a heart the only one with two lobes and a point, an arrow the only one
with a thin shaft. Near-duplicates (pentagon vs hexagon, ellipse vs circle) are left out.

Colour is a nuisance. Every object's colour is drawn independently of its category (uniform hue, saturation in
``[0, 1]``, value in ``[1/3, 1]``: each RGB channel has mean 1/2) and every background is a low-frequency field or
a patchwork of 4 or more independently drawn muted colours with the same channel means, so mean colours, within a
crop or over a grid of cells, say next to nothing about the category, and a crop's background little about which
image it came from. An object's colour is redrawn (its category untouched) while it would not stand out from the
pixels it covers. Textures (solid, striped, dotted, checkered) are per-object nuisances too. Captions name each
object's shape, a colour word derived from its drawn colour (:func:`colour_word`), its texture, counts and spatial
relations, all true of the image.

Image ``i`` of a split depends only on ``(seed, split, i)``, so a set is identical whatever the number of worker
processes that wrote it. The set on disk is read by the COCO loader like the real COCO 2017::

    <root>/train2017/000000000001.jpg ...
    <root>/val2017/...
    <root>/annotations/instances_train2017.json, instances_val2017.json,
                       captions_train2017.json, captions_val2017.json
    <root>/shapes.json          (marker holding the config; present only when the set is complete)

Typical use: ``root = ensure_shapes()`` generates the default set (10,000 train + 1,000 val images at 128 px)
into :func:`view_env.data.base.cache_dir` on first use and returns its path afterwards.
"""

from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from view_env.data.base import cache_dir
from view_env.data.errors import DatasetFormatError

#: Shape names, in category order; each is one category.
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "heart", "arrow"
)
#: Category names (the shapes); COCO category id = position + 1.
CATEGORIES: tuple[str, ...] = SHAPES
#: Colour words captions may use, derived from each object's drawn colour by :func:`colour_word`; not categories.
COLOURS: tuple[str, ...] = ("red", "orange", "brown", "yellow", "green", "cyan", "blue", "purple", "pink", "grey",
                            "white")
#: Per-object surface textures: nuisance variation that captions may mention, not categories.
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
#: Split names; the COCO folders are ``<split>2017``.
SPLITS: tuple[str, ...] = ("train", "val")

#: Version tag of the generator; a change to the images or annotations must change it (it names the cache folder
#: and is checked in the marker, so a set of another version is never read as this one).
GENERATOR_VERSION = "shapes-v2"
MARKER_NAME = "shapes.json"

MIN_OBJECTS = 2
MAX_OBJECTS = 8
#: Object size (diameter of the circle through its outermost points) as a fraction of the image side.
MIN_SIZE_FRACTION = 0.05
MAX_SIZE_FRACTION = 0.6
#: Smallest object diameter in pixels, so that shapes stay recognisable on small images.
MIN_SIZE_PIXELS = 6.0
#: An object must keep at least this fraction of its own pixels visible under later objects.
MIN_VISIBLE_FRACTION = 0.3
MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 95
#: An object's colour is redrawn until the RGB distance (0..255 per channel) from it to all but the closest
#: ``MIN_CONTRAST_QUANTILE`` of the pixels it covers is at least ``MIN_CONTRAST`` (of up to 16 draws; failing
#: that, the draw that stands out most).
MIN_CONTRAST = 70.0
MIN_CONTRAST_QUANTILE = 0.2

_SPLIT_CODES = {"train": 0, "val": 1}
_SUPERSAMPLE = 3
_ATTEMPTS_PER_OBJECT = 30
_MAX_ATTEMPTS = 1000
_TEXTURE_MIN_SIZE = 16.0
_COLOUR_CANDIDATES = 16
# Object colours: HSV with uniform hue, saturation in [0, 1] and value in [1/3, 1]. Over a uniform hue a channel
# averages value * (1 - saturation / 2), so every channel has mean 2/3 * 3/4 = 1/2.
_OBJECT_SATURATION = (0.0, 1.0)
_OBJECT_VALUE = (1.0 / 3.0, 1.0)
# Background colours: muted (saturation in [0, 0.45]), with value in [0.25, 0.877] so that every channel has the
# objects' mean 1/2 as well (0.5635 * (1 - 0.1125) = 0.5): a mean colour does not tell object from background.
_BACKGROUND_SATURATION = (0.0, 0.45)
_BACKGROUND_VALUE = (0.25, 0.877)
# A texture's second colour and an outline move the object's colour towards white or black by these fractions;
# the texture's direction is a fair coin, so (with channel means of 1/2) textures do not shift the mean colour.
_TINT = 0.4
_OUTLINE = 0.55
# Rotation range (degrees) of each shape; round symmetric shapes do not rotate, squares, crosses and hearts tilt.
_ROTATION = {
    "circle": 0.0, "square": 30.0, "triangle": 180.0, "star": 180.0, "hexagon": 30.0, "cross": 30.0, "ring": 0.0,
    "crescent": 180.0, "heart": 30.0, "arrow": 180.0,
}
_PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
_BACKGROUND_WORDS = {
    "shaded": "softly shaded", "mottled": "mottled", "patchwork": "patchwork", "striped": "faintly striped"
}
# Hue (degrees) upper ends of the chromatic colour words, red wrapping around 360.
_HUE_WORDS = ((15.0, "red"), (45.0, "orange"), (70.0, "yellow"), (165.0, "green"), (195.0, "cyan"),
              (260.0, "blue"), (290.0, "purple"), (335.0, "pink"), (360.0, "red"))


def colour_word(hue: float, saturation: float, value: float) -> str:
    """The word of :data:`COLOURS` that names an HSV colour (each component in ``[0, 1]``).

    Low saturation (< 0.25) reads as ``"white"`` (value >= 0.85) or ``"grey"``; otherwise the hue picks the name,
    and dark oranges and yellows (value < 0.55) read as ``"brown"``.
    """
    if saturation < 0.25:
        return "white" if value >= 0.85 else "grey"
    degrees = (hue % 1.0) * 360.0
    word = next(name for end, name in _HUE_WORDS if degrees < end)
    return "brown" if word in ("orange", "yellow") and value < 0.55 else word


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``float [..., 3]`` HSV in ``[0, 1]`` -> ``float32 [..., 3]`` RGB in ``0..255`` (``colorsys``, vectorised).

    Channel ``c`` is ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6 h) mod 6`` and ``n = (5, 3, 1)``.
    """
    hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * hue) % 6.0  # (..., 3)
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb * 255.0).astype(np.float32)


def _random_hsv(
    rng: np.random.Generator, count: int, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    """``float64 [count, 3]`` HSV colours with uniform hue and uniform saturation and value in the given ranges."""
    return np.stack(
        [rng.uniform(0.0, 1.0, count), rng.uniform(*saturation, count), rng.uniform(*value, count)], axis=1
    )


def _unit_shape(shape: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The outline of ``shape`` inscribed in the unit circle, centred on the origin.

    Returns:
        The filled polygon's vertices ``float64 [V, 2]`` and the polygons cut out of it afterwards (the ring's
        hole, the disc that bites the crescent), each ``float64 [V', 2]``.
    """

    def ring(count: int, start_degrees: float, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
        angles = np.deg2rad(start_degrees + np.arange(count) * 360.0 / count)
        radius = np.resize(np.asarray(radii), count)
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)

    disc = ring(64, 0.0)
    if shape == "circle":
        return disc, ()
    if shape == "ring":
        return disc, (0.55 * disc,)
    if shape == "crescent":  # the unit disc less a disc of radius 0.8 shifted right: horns meet at x = 0.625
        return disc, (0.8 * disc + np.array([0.45, 0.0]),)
    if shape == "square":
        return ring(4, 45.0), ()
    if shape == "triangle":
        return ring(3, -90.0), ()
    if shape == "star":
        return ring(10, -90.0, (1.0, 0.42)), ()
    if shape == "hexagon":
        return ring(6, 0.0), ()
    if shape == "cross":
        t = 0.34
        arm = math.sqrt(1.0 - t * t)
        quarter = [(-t, -arm), (t, -arm), (t, -t)]
        points = []
        for k in range(4):  # rotate the top arm by k quarter turns: (x, y) -> (-y, x)
            for x, y in quarter:
                for _ in range(k):
                    x, y = -y, x
                points.append((x, y))
        return np.asarray(points), ()
    if shape == "heart":  # the classic parametric heart, point down (image y grows downwards)
        t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y - (y.max() + y.min()) / 2.0], axis=1)
        return points / np.linalg.norm(points, axis=1).max(), ()
    if shape == "arrow":  # pointing right: a shaft of half-width 0.2 and a head of half-width 0.55
        return np.array([(-0.95, -0.2), (0.1, -0.2), (0.1, -0.55), (1.0, 0.0), (0.1, 0.55), (0.1, 0.2),
                         (-0.95, 0.2)]), ()
    raise ValueError(f"no outline for shape {shape!r}; expected one of {SHAPES}")


_OUTLINES = {shape: _unit_shape(shape) for shape in SHAPES}


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated image and its annotations.

    Objects are listed in painter's order (index 0 is drawn first, at the back).

    Attributes:
        image: RGB image of ``image_size x image_size`` pixels.
        boxes: ``int64 [K, 4]`` box ``(x0, y0, x1, y1)`` of each object's visible pixels, end exclusive.
        labels: ``int64 [K]`` index of each object's category (its shape) into :data:`CATEGORIES`.
        areas: ``int64 [K]`` number of visible pixels of each object.
        captions: Five captions naming objects, counts and spatial relations that hold in the image.
        instance_map: ``int16 [image_size, image_size]`` index of the object each pixel shows, -1 for background.
        textures: Texture of each object, from :data:`TEXTURES`.
        colours: Colour word of each object, from :data:`COLOURS` (see :func:`colour_word`).
        rgb: ``float32 [K, 3]`` base colour of each object in ``0..255``, before texture, shading and JPEG.
    """

    image: Image.Image
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    captions: tuple[str, ...]
    instance_map: np.ndarray
    textures: tuple[str, ...]
    colours: tuple[str, ...]
    rgb: np.ndarray


@dataclass
class _Object:
    """One placed object: its drawing parameters and its mask on the patch ``[y0:y1, x0:x1]``."""

    shape: str
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float  # radians
    x0: int
    y0: int
    x1: int
    y1: int
    alpha: np.ndarray  # float32 [h, w] coverage in [0, 1]
    mask: np.ndarray  # bool [h, w], alpha >= 0.5
    area: int

    @property
    def label(self) -> int:
        return CATEGORIES.index(self.shape)

    @property
    def region(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _check_int(name: str, value: Any, minimum: int, fix: str) -> int:
    """Return ``value`` if it is an integer ``>= minimum``; otherwise raise an error naming it and ``fix``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}; {fix}")
    return int(value)


def _check_split(split: str) -> int:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_CODES[split]


def _draw_patch(shape: str, cx: float, cy: float, radius: float, angle: float, box: tuple[int, int, int, int]
                ) -> np.ndarray:
    """Rasterise a filled shape with anti-aliasing (supersampled, then box-filtered down).

    Args:
        box: Patch ``(x0, y0, x1, y1)`` in image pixels.

    Returns:
        ``float32 [y1 - y0, x1 - x0]`` pixel coverage in ``[0, 1]``.
    """
    x0, y0, x1, y1 = box
    s = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    cos, sin = math.cos(angle), math.sin(angle)
    # Supersampled pixel (i, j) covers [i, i + 1); its centre is at i + 0.5, hence the half-pixel shift.
    px, py = (cx - x0) * s - 0.5, (cy - y0) * s - 0.5
    outline, cuts = _OUTLINES[shape]
    for polygon, fill in ((outline, 255), *((cut, 0) for cut in cuts)):
        xs = px + radius * s * (polygon[:, 0] * cos - polygon[:, 1] * sin)
        ys = py + radius * s * (polygon[:, 0] * sin + polygon[:, 1] * cos)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=fill)
    return np.asarray(canvas.reduce(s), dtype=np.float32) * (1.0 / 255.0)


def _eroded(alpha: np.ndarray, width: int) -> np.ndarray:
    """``float32 [h, w]``: coverage ``alpha`` eroded by a ``(2 width + 1)``-pixel square, outside the patch empty.

    ``alpha`` less this is the band within ``width`` pixels of every contour, holes included.
    """
    padded = np.pad(alpha, width)
    h, w = alpha.shape
    eroded = alpha.copy()
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            np.minimum(eroded, padded[dy : dy + h, dx : dx + w], out=eroded)
    return eroded


def _sample_object(rng: np.random.Generator, image_size: int) -> _Object:
    """Draw a random object (category, texture, size, position, rotation) and rasterise its mask."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    low = max(MIN_SIZE_FRACTION * image_size, MIN_SIZE_PIXELS)
    high = max(MAX_SIZE_FRACTION * image_size, low)
    diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    radius = diameter / 2.0
    # The circle through the outermost points lies inside the image, so the whole object does.
    cx = float(rng.uniform(radius, image_size - radius))
    cy = float(rng.uniform(radius, image_size - radius))
    angle = math.radians(float(rng.uniform(-_ROTATION[shape], _ROTATION[shape])))
    texture = "solid" if diameter < _TEXTURE_MIN_SIZE else TEXTURES[rng.integers(len(TEXTURES))]
    x0, y0 = max(0, math.floor(cx - radius)), max(0, math.floor(cy - radius))
    x1, y1 = min(image_size, math.ceil(cx + radius)), min(image_size, math.ceil(cy + radius))
    alpha = _draw_patch(shape, cx, cy, radius, angle, (x0, y0, x1, y1))
    mask = alpha >= 0.5
    return _Object(shape, texture, cx, cy, radius, angle, x0, y0, x1, y1, alpha, mask, int(mask.sum()))


def _place_objects(rng: np.random.Generator, image_size: int) -> tuple[list[_Object], np.ndarray]:
    """Place 2 to 8 objects back to front, resampling any that would hide more than 70% of an earlier one.

    Returns:
        The objects in painter's order and the ``int16 [S, S]`` instance map (-1 for background).
    """
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    owner = np.full((image_size, image_size), -1, dtype=np.int16)
    objects: list[_Object] = []
    visible: list[int] = []
    attempts = 0
    slot_attempts = 0
    while len(objects) < target:
        attempts += 1
        slot_attempts += 1
        if slot_attempts > _ATTEMPTS_PER_OBJECT and len(objects) >= MIN_OBJECTS:
            break  # the image is crowded: keep the objects placed so far
        if attempts > _MAX_ATTEMPTS:
            raise RuntimeError(f"could not place {MIN_OBJECTS} objects in {_MAX_ATTEMPTS} attempts")
        candidate = _sample_object(rng, image_size)
        if candidate.area == 0:
            continue
        covered_owner = owner[candidate.region][candidate.mask]
        covered = np.bincount(covered_owner.astype(np.int64) + 1, minlength=len(objects) + 1)[1:]
        remaining = np.asarray(visible, dtype=np.int64) - covered
        minimum = np.asarray([math.ceil(MIN_VISIBLE_FRACTION * o.area) for o in objects], dtype=np.int64)
        if np.any(remaining < minimum):
            continue
        owner[candidate.region][candidate.mask] = len(objects)
        visible = [*remaining.tolist(), candidate.area]
        objects.append(candidate)
        slot_attempts = 0
    return objects, owner


def _background(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, str]:
    """A muted background ``float32 [S, S, 3]`` in 0..255 made of independently drawn colours, and its kind.

    Kinds: ``shaded``, a bicubic field through a 2x2 or 3x3 grid of colours; ``mottled``, the same through a 4x4
    to 6x6 grid; ``patchwork``, the Voronoi regions of 4 to 7 random points, one colour each; ``striped``, a shaded
    field under faint stripes (5 to 12% brightness). Mild Gaussian grain covers all of them.
    """
    kind = ("shaded", "mottled", "patchwork", "striped")[rng.integers(4)]
    if kind == "patchwork":
        count = int(rng.integers(4, 8))
        colours = _hsv_to_rgb(_random_hsv(rng, count, _BACKGROUND_SATURATION, _BACKGROUND_VALUE))  # (n, 3)
        seeds = rng.uniform(0.0, image_size, (count, 2))  # (n, 2) as (x, y)
        centres = np.arange(image_size, dtype=np.float64) + 0.5
        distance = (centres[None, :, None] - seeds[:, 0]) ** 2 + (centres[:, None, None] - seeds[:, 1]) ** 2
        canvas = colours[distance.argmin(-1)]  # (S, S, 3)
    else:
        cells = int(rng.integers(4, 7)) if kind == "mottled" else int(rng.integers(2, 4))
        grid = _hsv_to_rgb(_random_hsv(rng, cells * cells, _BACKGROUND_SATURATION, _BACKGROUND_VALUE))
        grid = grid.reshape(cells, cells, 3)
        size = (image_size, image_size)
        canvas = np.stack(
            [np.asarray(Image.fromarray(grid[:, :, c]).resize(size, Image.Resampling.BICUBIC)) for c in range(3)],
            axis=-1,
        )
        if kind == "striped":
            theta = rng.uniform(0.0, math.pi)
            period = rng.uniform(6.0, 24.0)
            coords = np.arange(image_size, dtype=np.float32)
            phase = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
            wave = np.sin(2.0 * math.pi * phase / period)
            if rng.random() < 0.5:
                wave = np.sign(wave)
            canvas = canvas * (1.0 + rng.uniform(0.05, 0.12) * wave)[:, :, None]
    grain = rng.normal(0.0, rng.uniform(0.0, 6.0), (image_size, image_size, 1))
    return np.clip(canvas + grain, 0.0, 255.0).astype(np.float32), kind


def _choose_colour(rng: np.random.Generator, canvas: np.ndarray, obj: _Object) -> np.ndarray:
    """The HSV colour ``float64 [3]`` of ``obj``, drawn independently of its shape.

    Of :data:`_COLOUR_CANDIDATES` random colours it is the first whose :data:`MIN_CONTRAST_QUANTILE` quantile of
    RGB distances to the pixels of ``canvas`` (``float32 [S, S, 3]``) under the object's mask reaches
    :data:`MIN_CONTRAST`, or the one with the largest such quantile when none does.
    """
    candidates = _random_hsv(rng, _COLOUR_CANDIDATES, _OBJECT_SATURATION, _OBJECT_VALUE)  # (n, 3)
    covered = canvas[obj.region][obj.mask]  # (P, 3)
    covered = covered[:: max(1, len(covered) // 256)]  # an even subsample is enough for a quantile
    distance = np.linalg.norm(covered[None, :, :] - _hsv_to_rgb(candidates)[:, None, :], axis=-1)  # (n, P)
    rank = int(MIN_CONTRAST_QUANTILE * (distance.shape[1] - 1))
    contrast = np.partition(distance, rank, axis=1)[:, rank]  # (n,) the quantile, as the rank-th smallest
    passing = np.flatnonzero(contrast >= MIN_CONTRAST)
    return candidates[int(passing[0]) if len(passing) else int(contrast.argmax())]


def _paint(rng: np.random.Generator, canvas: np.ndarray, obj: _Object, base: np.ndarray) -> None:
    """Composite ``obj`` in colour ``base`` (``float32 [3]``, 0..255) onto ``canvas`` (``float32 [S, S, 3]``, in
    place): texture, shading and outline."""
    # The texture's second colour is a lighter or darker tint of the base, so the colour word stays true.
    tint = base + _TINT * (255.0 - base) if rng.random() < 0.5 else base * (1.0 - _TINT)
    h, w = obj.alpha.shape
    xs = np.arange(obj.x0, obj.x1, dtype=np.float32)[None, :] + 0.5 - obj.cx
    ys = np.arange(obj.y0, obj.y1, dtype=np.float32)[:, None] + 0.5 - obj.cy
    theta = obj.angle + rng.uniform(0.0, math.pi)
    u = xs * math.cos(theta) + ys * math.sin(theta)  # (h, w) texture coordinates, rotated with the object
    v = -xs * math.sin(theta) + ys * math.cos(theta)
    period = max(3.0, 2.0 * obj.radius / rng.uniform(3.0, 6.0))
    if obj.texture == "striped":
        pattern = np.mod(u / period, 1.0) < 0.5
    elif obj.texture == "dotted":
        du, dv = np.mod(u / period, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        pattern = du * du + dv * dv < 0.3**2
    elif obj.texture == "checkered":
        pattern = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        pattern = np.zeros((h, w), dtype=bool)
    fill = np.where(pattern[:, :, None], tint, base)  # (h, w, 3)
    # Soft directional shading: brightness varies by up to +-12% across the object.
    shade_angle = rng.uniform(0.0, 2.0 * math.pi)
    gain = rng.uniform(0.0, 0.12)
    shading = 1.0 + gain * (xs * math.cos(shade_angle) + ys * math.sin(shade_angle)) / obj.radius
    fill = fill * shading[:, :, None]
    if 2.0 * obj.radius >= 12.0 and rng.random() < 0.6:
        # An outline along every contour (the ring's hole and the crescent's bite too), towards white on a dark
        # colour and towards black on a light one.
        eroded = _eroded(obj.alpha, 1 if obj.radius < 20.0 else 2)
        band = np.where(obj.alpha > 0.0, 1.0 - eroded / np.maximum(obj.alpha, 1e-6), 0.0)[:, :, None]
        dark = float(base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) < 127.5
        edge = base + _OUTLINE * (255.0 - base) if dark else base * (1.0 - _OUTLINE)
        fill = fill * (1.0 - band) + edge * band
    alpha = obj.alpha[:, :, None]
    patch = canvas[obj.region]
    canvas[obj.region] = patch * (1.0 - alpha) + fill * alpha


def _visible_boxes(objects: list[_Object], owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``int64 [K, 4]`` (x0, y0, x1, y1, end exclusive) and areas ``int64 [K]`` of the visible pixels."""
    boxes = np.zeros((len(objects), 4), dtype=np.int64)
    areas = np.zeros(len(objects), dtype=np.int64)
    for k, obj in enumerate(objects):
        ys, xs = np.nonzero(owner[obj.region] == k)
        boxes[k] = (obj.x0 + xs.min(), obj.y0 + ys.min(), obj.x0 + xs.max() + 1, obj.y0 + ys.max() + 1)
        areas[k] = len(xs)
    return boxes, areas


def _overlaps(objects: list[_Object]) -> np.ndarray:
    """``int64 [K, K]``: entry ``[j, k]`` counts the pixels where the full masks of objects j and k intersect."""
    count = len(objects)
    overlap = np.zeros((count, count), dtype=np.int64)
    for j in range(count):
        a = objects[j]
        for k in range(j):
            b = objects[k]
            x0, y0, x1, y1 = max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)
            if x0 >= x1 or y0 >= y1:
                continue
            mask_a = a.mask[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
            mask_b = b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
            overlap[j, k] = overlap[k, j] = int(np.count_nonzero(mask_a & mask_b))
    return overlap


# --- captions ---------------------------------------------------------------------------------------------------


def box_relations(box_a: np.ndarray, box_b: np.ndarray, image_size: int) -> tuple[str, ...]:
    """The geometric relations of box ``a`` to box ``b`` that captions may state, from boxes alone.

    ``"left of"`` means that a's box ends (x1, exclusive) at or before b's box starts; likewise ``"right of"``,
    ``"above"`` and ``"below"``. ``"next to"`` means that the boxes are within 10% of the image side of each other;
    captions state it only when the two shapes' masks do not touch. Occlusion (``"in front of"``) depends on
    masks and drawing order, not on boxes, so it is not returned here.

    Args:
        box_a: ``[4]`` visible box ``(x0, y0, x1, y1)``, end exclusive.
        box_b: Likewise.
        image_size: Side of the image in pixels.
    """
    ax0, ay0, ax1, ay1 = (int(v) for v in box_a)
    bx0, by0, bx1, by1 = (int(v) for v in box_b)
    found = []
    if ax1 <= bx0:
        found.append("left of")
    if bx1 <= ax0:
        found.append("right of")
    if ay1 <= by0:
        found.append("above")
    if by1 <= ay0:
        found.append("below")
    gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
    if gap <= 0.1 * image_size:
        found.append("next to")
    return tuple(found)


_RELATION_TEMPLATES = {
    "left of": (
        "{a} is to the left of {b}.",
        "{a} is left of {b}.",
        "{b} is to the right of {a}.",
        "{a} sits to the left of {b}.",
    ),
    "above": ("{a} is above {b}.", "{b} is below {a}.", "{a} is higher up than {b}.", "{a} sits above {b}."),
    "in front of": (
        "{a} is in front of {b}.",
        "{a} partly covers {b}.",
        "{b} is partly hidden behind {a}.",
        "{a} overlaps {b}.",
    ),
    "next to": ("{a} is next to {b}.", "{a} is beside {b}.", "{a} and {b} are next to each other."),
}
_LISTING_TEMPLATES = (
    "{List}.",
    "A picture of {list}.",
    "{List} on a {background} background.",
    "An image with {list}.",
    "{Number} shapes on a {background} background: {list}.",
    "Shapes scattered on a {background} background: {list}.",
)


def _choose(rng: np.random.Generator, options: list[Any] | tuple[Any, ...]) -> Any:
    return options[int(rng.integers(len(options)))]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Describer:
    """Builds the noun phrases and true statements about one scene.

    An object's name is ``"<colour word> <shape>"`` (``"red circle"``); ``colours`` holds each object's word.
    """

    def __init__(
        self, objects: list[_Object], colours: list[str], boxes: np.ndarray, overlap: np.ndarray, image_size: int
    ) -> None:
        self.objects = objects
        self.colours = colours
        self.boxes = boxes
        self.overlap = overlap
        self.image_size = image_size
        self.names = [f"{colour} {o.shape}" for colour, o in zip(colours, objects, strict=True)]

    def textured(self, k: int) -> str:
        obj = self.objects[k]
        return self.names[k] if obj.texture == "solid" else f"{obj.texture} {self.names[k]}"

    def reference(self, rng: np.random.Generator, k: int) -> str:
        """A phrase for object k: definite when it identifies the object, else indefinite (still true)."""
        same = [j for j in range(len(self.objects)) if self.names[j] == self.names[k]]
        if len(same) == 1:
            mention_texture = self.objects[k].texture != "solid" and rng.random() < 0.4
            return "the " + (self.textured(k) if mention_texture else self.names[k])
        if self.objects[k].texture != "solid" and sum(self.textured(j) == self.textured(k) for j in same) == 1:
            return "the " + self.textured(k)
        return "a " + self.names[k]

    def group_phrases(self, rng: np.random.Generator, indices: list[int]) -> list[str]:
        """Noun phrases for the objects ``indices``, grouped by name with counts (``"two red stars"``)."""
        mention_texture = rng.random() < 0.5
        phrases = []
        for name in dict.fromkeys(self.names[k] for k in indices):
            members = [k for k in indices if self.names[k] == name]
            if len(members) == 1:
                phrases.append("a " + (self.textured(members[0]) if mention_texture else name))
            else:
                colour, shape = name.split(" ")
                phrases.append(f"{_NUMBERS[len(members)]} {colour} {_PLURALS[shape]}")
        return phrases

    def listing(self, rng: np.random.Generator, background: str) -> str:
        order = rng.permutation(len(self.objects)).tolist()
        items = _join(self.group_phrases(rng, order))
        template = _choose(rng, _LISTING_TEMPLATES)
        return template.format(
            list=items,
            List=_capitalise(items),
            background=_BACKGROUND_WORDS[background],
            Number=_capitalise(_NUMBERS[len(self.objects)]),
        )

    def count(self, rng: np.random.Generator) -> str:
        total = len(self.objects)
        kind = int(rng.integers(4))
        if kind == 0:
            k = int(rng.integers(total))
            return f"There are {_NUMBERS[total]} shapes in the image, including {self.reference(rng, k)}."
        if kind == 1:
            colour = self.colours[int(rng.integers(total))]
            members = [k for k in range(total) if self.colours[k] == colour]
            items = _join(self.group_phrases(rng, members))
            if len(members) == 1:
                return f"Only one shape is {colour}: {items}."
            return f"{_capitalise(_NUMBERS[len(members)])} of the shapes are {colour}: {items}."
        if kind == 2:
            shape = self.objects[int(rng.integers(total))].shape
            members = [k for k, o in enumerate(self.objects) if o.shape == shape]
            items = _join(self.group_phrases(rng, members))
            if len(members) == 1:
                return f"There is exactly one {shape}: {items}."
            return f"There are {_NUMBERS[len(members)]} {_PLURALS[shape]}: {items}."
        name = self.names[int(rng.integers(total))]
        number = self.names.count(name)
        if number == 1:
            return f"There is exactly one {name} in the picture."
        colour, shape = name.split(" ")
        return f"The picture contains {_NUMBERS[number]} {colour} {_PLURALS[shape]}."

    def relations(self) -> list[tuple[str, int, int]]:
        """Every true statement ``(relation, a, b)`` with ``a`` the subject, without mirrored duplicates."""
        found = []
        count = len(self.objects)
        for a in range(count):
            for b in range(count):
                if a == b:
                    continue
                if a > b and self.overlap[a, b] >= max(4, 0.05 * self.objects[b].area):
                    found.append(("in front of", a, b))
                geometric = box_relations(self.boxes[a], self.boxes[b], self.image_size)
                # "left of" and "above" cover "right of" and "below" through the mirrored templates.
                found.extend((name, a, b) for name in ("left of", "above") if name in geometric)
                if a < b and "next to" in geometric and self.overlap[a, b] == 0:
                    found.append(("next to", a, b))
        return found

    def state(self, rng: np.random.Generator, fact: tuple[str, int, int]) -> str:
        name, a, b = fact
        template = _choose(rng, _RELATION_TEMPLATES[name])
        return _capitalise(template.format(a=self.reference(rng, a), b=self.reference(rng, b)))


def _captions(rng: np.random.Generator, describer: _Describer, background: str) -> tuple[str, ...]:
    """Five distinct captions: a listing, a count and up to three relations, topped up with more of any kind."""
    facts = describer.relations()
    order = rng.permutation(len(facts)).tolist()
    chosen: list[str] = []

    def add(make: Any, tries: int = 20) -> None:
        for _ in range(tries):
            text = make()
            if text not in chosen:
                chosen.append(text)
                return

    add(lambda: describer.listing(rng, background))
    add(lambda: describer.count(rng))
    for position in order[:3]:
        add(lambda position=position: describer.state(rng, facts[position]))
    makers = [lambda: describer.listing(rng, background), lambda: describer.count(rng)]
    if facts:
        makers.append(lambda: describer.state(rng, facts[int(rng.integers(len(facts)))]))
    while len(chosen) < 5:
        before = len(chosen)
        add(_choose(rng, makers))
        if len(chosen) == before:  # a scene too plain for five distinct captions repeats one
            chosen.append(chosen[int(rng.integers(len(chosen)))])
    captions = chosen[:5]
    return tuple(captions[i] for i in rng.permutation(5).tolist())


def generate_scene(seed: int, split: str, index: int, image_size: int) -> Scene:
    """Generate image ``index`` of ``split``; the result depends only on these four arguments.

    Args:
        seed: Data set seed, ``>= 0``.
        split: ``"train"`` or ``"val"``.
        index: Position of the image in its split, ``>= 0``.
        image_size: Side of the square image in pixels, ``>= 32``.

    Returns:
        The :class:`Scene` with 2 to 8 objects in painter's order.
    """
    seed = _check_int("seed", seed, 0, "use a non-negative seed")
    index = _check_int("index", index, 0, "image positions start at 0")
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, f"shapes need at least {MIN_IMAGE_SIZE} px")
    rng = np.random.default_rng([seed, _check_split(split), index])
    objects, owner = _place_objects(rng, image_size)
    canvas, background = _background(rng, image_size)
    hsv = np.zeros((len(objects), 3), dtype=np.float64)
    for k, obj in enumerate(objects):  # each colour stands out from what is already painted under the object
        hsv[k] = _choose_colour(rng, canvas, obj)
        _paint(rng, canvas, obj, _hsv_to_rgb(hsv[k]))
    image = Image.fromarray(np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8))  # H x W x 3 uint8: RGB
    boxes, areas = _visible_boxes(objects, owner)
    colours = [colour_word(*row) for row in hsv.tolist()]
    describer = _Describer(objects, colours, boxes, _overlaps(objects), image_size)
    captions = _captions(rng, describer, background)
    labels = np.asarray([o.label for o in objects], dtype=np.int64)
    textures = tuple(o.texture for o in objects)
    return Scene(image, boxes, labels, areas, captions, owner, textures, tuple(colours), _hsv_to_rgb(hsv))


# --- writing the data set ---------------------------------------------------------------------------------------


def _config(num_train: int, num_val: int, image_size: int, seed: int) -> dict[str, Any]:
    return {
        "generator": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "categories": list(CATEGORIES),
    }


def _read_marker(root: Path) -> dict[str, Any] | None:
    """The config in ``root``'s marker, or ``None`` when there is no readable marker."""
    try:
        content = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def finished_shapes_root(root: str | Path) -> Path | None:
    """``root`` when it holds a finished Shapes set of this :data:`GENERATOR_VERSION` (whatever its size or seed),
    ``None`` when it holds no finished set (no readable marker).

    Raises:
        DatasetFormatError: The marker names another generator version: an old set, whose images and categories
            differ from this generator's, is never read as this one.
    """
    root = Path(root).expanduser()
    marker = _read_marker(root)
    if marker is None:
        return None
    if marker.get("generator") != GENERATOR_VERSION:
        raise DatasetFormatError(
            root / MARKER_NAME,
            f"holds a Shapes set of generator {marker.get('generator')!r}, not the current {GENERATOR_VERSION!r} "
            f"(the images and categories differ); delete {root} to regenerate it there, or pass another root",
        )
    return root


_Task = tuple[int, str, int, int, str]  # seed, split, index, image size, JPEG path
_Result = tuple[list[int], list[list[int]], list[int], list[str]]  # labels, COCO boxes, areas, captions


def _render_task(task: _Task) -> _Result:
    """Generate one image, save it as JPEG and return its labels, COCO boxes, areas and captions."""
    seed, split, index, image_size, path = task
    scene = generate_scene(seed, split, index, image_size)
    scene.image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    xywh = [[int(x0), int(y0), int(x1 - x0), int(y1 - y0)] for x0, y0, x1, y1 in scene.boxes.tolist()]
    return scene.labels.tolist(), xywh, scene.areas.tolist(), list(scene.captions)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    with open(path, "w") as file:
        json.dump(content, file, separators=(",", ":"))


def write_shapes(
    root: str | Path,
    num_train: int = 10000,
    num_val: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the Shapes set into ``root`` in the COCO 2017 layout and return ``root``.

    The set is written into a temporary sibling folder, completed with the marker ``shapes.json`` (holding the
    config) and renamed into place in one step, so ``root`` is either absent or complete. Image ids run
    ``1..num_train`` for train and continue for val; annotation and caption ids are likewise unique across files.

    Args:
        root: Folder to create. If it already holds a complete set with the same config, it is returned as is.
        num_train: Number of training images, ``>= 1``.
        num_val: Number of validation images, ``>= 0``.
        image_size: Side of the square images in pixels, ``>= 32``.
        seed: Data set seed, ``>= 0``.
        workers: Worker processes; ``None`` uses every CPU core. The output does not depend on it.
        progress: Show a progress bar on stderr while generating.

    Raises:
        ValueError: An argument is out of range (the message names it).
        FileExistsError: ``root`` exists and does not hold this exact set.
    """
    num_train = _check_int("num_train", num_train, 1, "the set needs at least one training image")
    num_val = _check_int("num_val", num_val, 0, "use 0 for no validation images")
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, f"shapes need at least {MIN_IMAGE_SIZE} px")
    seed = _check_int("seed", seed, 0, "use a non-negative seed")
    if workers is None:
        workers = os.cpu_count() or 1
    workers = _check_int("workers", workers, 1, "use at least 1 worker")
    root = Path(root).expanduser()
    config = _config(num_train, num_val, image_size, seed)
    if root.exists():
        if _read_marker(root) == config:
            return root
        _refuse_existing(root, config)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_into(staging, config, workers, progress, desc=f"Shapes -> {root}")
        try:
            os.rename(staging, root)  # atomic; replaces ``root`` only if it is an empty folder
        except OSError:
            if _read_marker(root) != config:  # not another process finishing the same set first
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _refuse_existing(root: Path, config: dict[str, Any]) -> None:
    """Raise unless ``root`` is an empty folder (which the finished set may replace)."""
    if root.is_dir() and not any(root.iterdir()):
        return
    found = _read_marker(root)
    if found is None:
        holds = "files but no Shapes marker (shapes.json)" if root.is_dir() else "a file, not a folder"
    else:
        holds = "a Shapes set with config " + json.dumps({k: v for k, v in found.items() if k != "categories"})
    wanted = {k: v for k, v in config.items() if k != "categories"}
    suggestion = default_shapes_root(config["num_train"], config["num_val"], config["image_size"], config["seed"])
    raise FileExistsError(
        f"{root} already exists and holds {holds}, not the Shapes set asked for ({json.dumps(wanted)}); "
        f"pass another folder, e.g. {suggestion}, or delete {root}"
    )


def _write_into(folder: Path, config: dict[str, Any], workers: int, progress: bool, desc: str) -> None:
    """Render every image into ``folder`` and write the four COCO json files, then the marker."""
    seed, image_size = config["seed"], config["image_size"]
    (folder / "annotations").mkdir()
    jobs: list[tuple[str, int, int]] = []  # (split, index, image id)
    for split, count, first_id in (
        ("train", config["num_train"], 1),
        ("val", config["num_val"], config["num_train"] + 1),
    ):
        (folder / f"{split}2017").mkdir()
        jobs.extend((split, index, first_id + index) for index in range(count))
    tasks = [
        (seed, split, index, image_size, str(folder / f"{split}2017" / f"{image_id:012d}.jpg"))
        for split, index, image_id in jobs
    ]
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    info = {
        "description": f"Shapes: procedural multi-object scenes ({GENERATOR_VERSION})",
        "version": GENERATOR_VERSION,
        "seed": seed,
    }
    files: dict[str, dict[str, list[dict[str, Any]]]] = {
        split: {"images": [], "instances": [], "captions": []} for split in SPLITS
    }
    annotation_id = caption_id = 0
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
    with _task_runner(workers, len(tasks)) as run:
        for (split, _, image_id), result in zip(jobs, run(tasks), strict=True):
            labels, xywh, areas, captions = result
            entry = files[split]
            entry["images"].append(
                {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": image_size, "height": image_size}
            )
            for label, box, area in zip(labels, xywh, areas, strict=True):
                annotation_id += 1
                entry["instances"].append(
                    {
                        "id": annotation_id,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": box,
                        "area": area,
                        "iscrowd": 0,
                        "segmentation": [],
                    }
                )
            for caption in captions:
                caption_id += 1
                entry["captions"].append({"id": caption_id, "image_id": image_id, "caption": caption})
            bar.update()
    bar.close()
    for split in SPLITS:
        entry = files[split]
        _write_json(
            folder / "annotations" / f"instances_{split}2017.json",
            {
                "info": info,
                "licenses": [],
                "images": entry["images"],
                "annotations": entry["instances"],
                "categories": categories,
            },
        )
        _write_json(
            folder / "annotations" / f"captions_{split}2017.json",
            {"info": info, "licenses": [], "images": entry["images"], "annotations": entry["captions"]},
        )
    _write_json(folder / MARKER_NAME, config)


@contextmanager
def _task_runner(workers: int, num_tasks: int) -> Iterator[Callable[[list[_Task]], Iterable[_Result]]]:
    """Yield an ordered ``map`` of :func:`_render_task`: in-process for one worker, else over a process pool."""
    workers = min(workers, num_tasks)
    if workers <= 1:
        yield lambda tasks: map(_render_task, tasks)
        return
    chunksize = max(1, min(64, num_tasks // (8 * workers)))
    pool = multiprocessing.get_context().Pool(workers)
    try:
        yield lambda tasks: pool.imap(_render_task, tasks, chunksize=chunksize)
    finally:
        pool.terminate()
        pool.join()


def default_shapes_root(num_train: int = 10000, num_val: int = 1000, image_size: int = 128, seed: int = 0) -> Path:
    """The cache folder of the Shapes set with this config, ``cache_dir()/<version>-<train>-<val>-<size>-<seed>``
    with :data:`GENERATOR_VERSION` first (``shapes-v2-10000-1000-128-0`` for the default set), so that a set of
    another generator version is never found there."""
    return cache_dir() / f"{GENERATOR_VERSION}-{num_train}-{num_val}-{image_size}-{seed}"


def ensure_shapes(
    root: str | Path | None = None,
    num_train: int = 10000,
    num_val: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Return the root of the Shapes set with this config, generating it on first use.

    Safe when several processes call it at once: generation holds an exclusive ``fcntl.flock`` on the lock file
    ``.<root name>.lock`` next to the root, and the others wait and then find the set complete. Prints nothing
    when the set already exists.

    Args:
        root: Folder of the set; ``None`` uses :func:`default_shapes_root`.
        num_train, num_val, image_size, seed: The config, as in :func:`write_shapes`.
        progress: Show a progress bar while generating.

    Raises:
        ValueError: An argument is out of range.
        FileExistsError: ``root`` holds something other than this set.
    """
    root = Path(root).expanduser() if root is not None else default_shapes_root(num_train, num_val, image_size, seed)
    if _read_marker(root) == _config(num_train, num_val, image_size, seed):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return write_shapes(root, num_train, num_val, image_size, seed, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
