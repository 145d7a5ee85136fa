"""Drawing primitives for synthetic fundus photographs: eye geometry, masks, shapes, noise.

The vessel tree (vessels.py) and the DR lesions (lesions.py) are drawn with these.

Geometry is in native pixel coordinates (x right, y down). Shapes are drawn as 8-bit alpha
masks on a supersampled PIL canvas and box-reduced, which anti-aliases thin vessels and tiny
lesions without per-pixel Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 2  # supersampling factor of the mask canvases


@dataclass(frozen=True)
class Eye:
    """Geometry of one photograph, drawn as a left eye (disc left, +x temporal)."""

    h: int
    w: int
    centre: tuple[float, float]  # FOV centre
    radius: float  # FOV radius: all sizes scale with it
    disc: tuple[float, float]
    dd: float  # disc diameter
    fovea: tuple[float, float]
    right: bool  # a right eye is mirrored at the end, so its disc sits on the right as seen

    @property
    def step(self) -> float:  # vessel centre-line sampling step (px)
        return max(2.0, 0.018 * self.radius)


class Masks:
    """Lazily created supersampled alpha canvases, one per material ("vein", "blood", ...)."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (width * SS, height * SS)
        self._images: dict[str, Image.Image] = {}
        self._draws: dict[str, ImageDraw.ImageDraw] = {}

    def __getitem__(self, name: str) -> ImageDraw.ImageDraw:
        if name not in self._draws:
            self._images[name] = Image.new("L", self.size, 0)
            self._draws[name] = ImageDraw.Draw(self._images[name])
        return self._draws[name]

    def alpha(self, name: str, blur: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Native-resolution alpha in [0, 1] over the bounding box of what was drawn on
        `name`, as (box slices, alpha); None when nothing was drawn."""
        img = self._images[name].reduce(SS) if name in self._images else None
        bbox = img.getbbox() if img is not None else None
        if bbox is None:
            return None
        m = math.ceil(3 * blur) + 1  # room for the blur to spread
        x0, y0 = max(bbox[0] - m, 0), max(bbox[1] - m, 0)
        x1, y1 = min(bbox[2] + m, img.width), min(bbox[3] + m, img.height)
        img = img.crop((x0, y0, x1, y1))
        if blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        box = (slice(y0, y1), slice(x0, x1))
        return box, np.asarray(img, dtype=np.float32) * np.float32(1 / 255)


# Drawing primitives


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """Band-limited noise in about [-amp, amp]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-amp, amp, (cells, cells)).astype(np.float32)
    return np.array(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC))


def disk(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, value: float = 255) -> None:
    x, y, r = x * SS, y * SS, max(r * SS, 0.5)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=int(value))


def polygon(draw: ImageDraw.ImageDraw, pts: np.ndarray, value: float = 255) -> None:
    draw.polygon((pts * SS).ravel().tolist(), fill=int(value))


def stroke(draw: ImageDraw.ImageDraw, pts: np.ndarray, widths: np.ndarray, value: float = 255):
    """Tapered polyline. Runs of equal (supersampled, integer) width go in one PIL call;
    calibres under one canvas pixel are drawn 1 px wide but proportionally fainter."""
    p, w = pts * SS, np.asarray(widths) * SS
    wi = np.maximum(1, np.rint(w)).astype(int)
    fade = np.minimum(1.0, w)
    start = 0
    for i in range(1, len(p) + 1):
        if i == len(p) or wi[i] != wi[start] or abs(fade[i] - fade[start]) > 0.15:
            seg = p[max(start - 1, 0) : i]
            if len(seg) >= 2:
                v = int(value * fade[start])
                draw.line(seg.ravel().tolist(), fill=v, width=int(wi[start]), joint="curve")
            start = i


def blob(
    rng: np.random.Generator,
    x: float,
    y: float,
    rx: float,
    ry: float | None = None,
    angle: float = 0.0,
    wobble: float = 0.2,
    n: int = 18,
) -> np.ndarray:
    """Irregular closed outline: an ellipse whose radius is perturbed by low harmonics."""
    ry = rx if ry is None else ry
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 5)[:, None]
    amp = wobble * rng.uniform(0, 1, (3, 1)) / (k - 1)
    rad = 1 + (amp * np.cos(k * t + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(0)
    ex, ey = rx * rad * np.cos(t), ry * rad * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([x + c * ex - s * ey, y + s * ex + c * ey], 1)


def boat(x: float, y: float, half_width: float, depth: float) -> np.ndarray:
    """Pre-retinal (sub-hyaloid) haemorrhage: a flat fluid level on top, a rounded keel below."""
    t = np.linspace(0, np.pi, 28)
    return np.stack([x + half_width * np.cos(t), y + depth * np.sin(t) ** 0.7], 1)


def tangle(
    rng: np.random.Generator, x: float, y: float, spread: float, step: float, loops: int
) -> list[np.ndarray]:
    """Neovascular frond: short, strongly curling random walks around (x, y)."""
    out = []
    for _ in range(loops):
        n = int(rng.integers(12, 30))
        turn = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.1, 0.35)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turn + rng.normal(0, 0.7, n))
        steps = step * np.stack([np.cos(heading), np.sin(heading)], 1)
        start = np.array([x, y]) + rng.normal(0, spread, 2)
        out.append(start + np.cumsum(steps, 0))
    return out


# DR lesions


def fov_points(rng: np.random.Generator, eye: Eye, n: int, quadrant: int | None = None):
    """Up to n points in the FOV, biased to the posterior pole, off the disc. Quadrants
    0-3 split the retina at the fovea: superior/inferior x nasal/temporal."""
    m = 8 * n + 16
    pts = np.where(
        rng.random((m, 1)) < 0.6,
        np.asarray(eye.fovea) + rng.normal(0, 0.45 * eye.radius, (m, 2)),
        np.asarray(eye.centre) + rng.uniform(-1, 1, (m, 2)) * eye.radius,
    )
    ok = (np.hypot(*(pts - eye.centre).T) < 0.9 * eye.radius) & (
        np.hypot(*(pts - eye.disc).T) > 0.75 * eye.dd
    )
    if quadrant is not None:
        d = pts - eye.fovea
        ok &= ((d[:, 1] < 0) == (quadrant < 2)) & ((d[:, 0] < 0) == (quadrant % 2 == 0))
    return pts[ok][:n]
