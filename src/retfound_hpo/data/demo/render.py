"""Rendering one synthetic fundus photograph: anatomy, vessels, lesions, then a camera.

Two cameras mimic APTOS-2019 and Messidor-2 (frame, colour response, optics, noise). Images are
built planar, (3, H, W) float32, and returned as (H, W, 3) uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from retfound_hpo.data.demo.canvas import Eye, Masks, smooth_noise
from retfound_hpo.data.demo.lesions import draw_lesions
from retfound_hpo.data.demo.vessels import draw_vessels, vascular_tree


@dataclass(frozen=True)
class Camera:
    """A fundus camera and its photographer: frame geometry, colour response, optics."""

    name: str
    width: tuple[int, int]  # native image width range (px)
    aspect: tuple[float, float]  # width / height
    fov_fill: tuple[float, float]  # FOV diameter / image height
    clip_prob: float  # chance the FOV overflows the top and bottom edges
    clip_fill: tuple[float, float]  # FOV diameter / height when it does
    rgb_gain: tuple[float, float, float]
    gamma: float
    vignette: float  # darkening towards the FOV rim
    exposure: tuple[float, float]
    blur: tuple[float, float]  # defocus blur sd range (px)
    noise: tuple[float, float]  # sensor noise sd range (0-255 scale)
    jpeg_quality: int | None  # files are JPEG at this quality; None = PNG


# APTOS-2019: larger, wide frames with black side borders, the FOV often clipped top and
# bottom; warm (red) colour, exposure and focus vary a lot between clinics; lossless PNG.
CAMERA_A = Camera(
    name="aptos", width=(400, 560), aspect=(1.3, 1.5), fov_fill=(0.92, 1.0),
    clip_prob=0.4, clip_fill=(1.04, 1.2), rgb_gain=(1.0, 0.86, 0.88), gamma=1.0,
    vignette=0.15, exposure=(0.85, 1.35), blur=(0.3, 1.3), noise=(1.0, 3.5), jpeg_quality=None,
)  # fmt: skip
# Messidor-2: smaller, near-square frames, one protocol; yellower (less red and blue),
# flatter gamma, strong vignetting; JPEG.
CAMERA_B = Camera(
    name="messidor", width=(340, 460), aspect=(1.0, 1.15), fov_fill=(0.86, 0.94),
    clip_prob=0.0, clip_fill=(1.0, 1.0), rgb_gain=(0.86, 0.96, 0.58), gamma=0.9,
    vignette=0.4, exposure=(0.95, 1.1), blur=(0.4, 0.9), noise=(0.8, 1.8), jpeg_quality=90,
)  # fmt: skip


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    return np.float32([r, g, b]).reshape(3, 1, 1)  # broadcasts over planar (3, H, W) images


# Images are built planar, (3, H, W) float32: numpy is several times faster on whole planes
# than on interleaved (H, W, 3) pixels. Reflectances (0-1) come before illumination; tints
# multiply (absorbing blood), bright materials are blended towards their colour.
FUNDUS_LIGHT, FUNDUS_DARK = _rgb(0.95, 0.5, 0.26), _rgb(0.6, 0.22, 0.09)
DISC_RIM, DISC_CUP = _rgb(0.98, 0.7, 0.42), _rgb(1.0, 0.86, 0.64)
TINTS = {  # material: (transmission, mask blur as a fraction of the FOV diameter)
    "vein": (_rgb(0.45, 0.2, 0.3), 0.0),
    "artery": (_rgb(0.68, 0.4, 0.55), 0.0),
    "nv": (_rgb(0.6, 0.32, 0.45), 0.0),
    "blood": (_rgb(0.6, 0.15, 0.25), 0.0012),
}
BRIGHT = {  # material: (colour, mask blur as a fraction of the FOV diameter)
    "fibrous": (_rgb(0.92, 0.84, 0.74), 0.02),
    "cws": (_rgb(0.97, 0.9, 0.78), 0.012),
    "exudate": (_rgb(1.05, 0.92, 0.42), 0.0015),
    "reflex": (_rgb(1.0, 0.8, 0.6), 0.0),
}


def _sample_eye(rng: np.random.Generator, cam: Camera) -> Eye:
    w = int(rng.integers(cam.width[0], cam.width[1] + 1))
    h = round(w / rng.uniform(*cam.aspect))
    clipped = rng.random() < cam.clip_prob
    diam = min(h * rng.uniform(*(cam.clip_fill if clipped else cam.fov_fill)), 0.97 * w)
    r = diam / 2
    cx = float(np.clip(w / 2 + rng.normal(0, 0.02) * w, r + 2, w - r - 2))
    cy = h / 2 + rng.normal(0, 0.015) * h
    dd = diam * rng.uniform(0.13, 0.155)
    disc = (cx - rng.uniform(0.52, 0.66) * r, cy + rng.normal(0, 0.04) * r)
    fovea = (disc[0] + 2.5 * dd * rng.uniform(0.92, 1.08), disc[1] + dd * rng.uniform(0.1, 0.4))
    return Eye(h, w, (cx, cy), r, disc, dd, fovea, bool(rng.random() < 0.5))


def _box(eye: Eye, c: tuple[float, float], half: float) -> tuple[slice, slice]:
    """Slices of the window of half-size `half` around c, clipped to the image."""
    y0, x0 = max(int(c[1] - half), 0), max(int(c[0] - half), 0)
    y1, x1 = min(int(c[1] + half) + 2, eye.h), min(int(c[0] + half) + 2, eye.w)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _soft_ellipse(xx, yy, c, rx, ry, edge) -> np.ndarray:
    q = np.sqrt(((xx - c[0]) / rx) ** 2 + ((yy - c[1]) / ry) ** 2)
    return np.clip((1 - q) / edge + 0.5, 0, 1)


def _anatomy(rng, eye: Eye, xx, yy) -> np.ndarray:
    """Planar reflectance of a healthy retina: mottled choroid, macula, disc with cup."""
    base = FUNDUS_LIGHT + np.float32(rng.beta(1.5, 1.5)) * (FUNDUS_DARK - FUNDUS_LIGHT)
    mottle = smooth_noise(rng, eye.h, eye.w, 9, 0.07)  # choroidal blotches ...
    mottle += smooth_noise(rng, eye.h, eye.w, 70, 0.03)  # ... and grain
    mottle += 1
    img = mottle * base
    hue = smooth_noise(rng, eye.h, eye.w, 24, 0.08)  # uneven pigment: red vs the rest
    hue += 1
    img[1:] *= hue
    sig, depth = 0.55 * eye.dd, rng.uniform(0.25, 0.45)  # macula: darker, browner
    by, bx = _box(eye, eye.fovea, 3 * sig)
    d2 = (xx[:, bx] - eye.fovea[0]) ** 2 + (yy[by] - eye.fovea[1]) ** 2
    mac = depth * np.exp(d2 * np.float32(-0.5 / sig**2))
    mac += 0.2 * np.exp(d2 * np.float32(-0.5 / (0.12 * eye.dd) ** 2))  # foveal pit
    img[:, by, bx] *= 1 - mac * _rgb(0.7, 1.0, 0.9)
    rx = eye.dd / 2
    by, bx = _box(eye, eye.disc, 1.3 * rx)
    x, y, sub = xx[:, bx], yy[by], img[:, by, bx]
    a = _soft_ellipse(x, y, eye.disc, rx, rx * rng.uniform(1.0, 1.12), 0.3)
    sub += a * (DISC_RIM * np.float32(rng.uniform(0.9, 1.05)) - sub)
    cup, cup_r = (eye.disc[0] + 0.12 * rx, eye.disc[1]), rx * rng.uniform(0.3, 0.55)
    sub += _soft_ellipse(x, y, cup, cup_r, cup_r * 1.1, 0.5) * (DISC_CUP - sub)
    return img


def _camera(rng, img: np.ndarray, eye: Eye, cam: Camera, xx, yy) -> np.ndarray:
    """Illumination, colour response, optics and sensor noise; black outside the FOV."""
    dx, dy, inv = xx - eye.centre[0], yy - eye.centre[1], np.float32(eye.radius**-2)
    r2 = (dx**2 + dy**2) * inv
    hx, hy = (float(v) for v in rng.normal(0, 0.25, 2) * eye.radius)  # brightest spot
    falloff = inv * np.float32(rng.uniform(0.3, 0.9))  # 1 / (1 + a d^2): dim, never black
    illum = 1 / (1 + ((dx - hx) ** 2 + (dy - hy) ** 2) * falloff)
    illum *= 1 - np.float32(cam.vignette) * r2**2
    img *= illum
    gain = np.asarray(cam.rgb_gain) * rng.uniform(0.93, 1.07, 3) * rng.uniform(*cam.exposure)
    img *= _rgb(*gain * 4095)
    np.clip(img, 0, 4095, out=img)
    # Gamma through a 12-bit look-up table: much cheaper than a float power.
    lut = np.linspace(0, 1, 4096) ** (cam.gamma * rng.uniform(0.92, 1.08)) * 255 + 0.5
    planes = np.take(lut.astype(np.uint8), img.astype(np.uint16))
    pil = Image.merge("RGB", [Image.fromarray(p) for p in planes])
    sigma = rng.uniform(*cam.blur)  # defocus: one box pass with the Gaussian's variance
    pil = pil.filter(ImageFilter.BoxBlur((math.sqrt(1 + 12 * sigma**2) - 1) / 2))
    # Luminance noise only: cameras subsample chroma.
    noise = rng.random((eye.h, eye.w), np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(rng.uniform(*cam.noise) * math.sqrt(12))
    fov = np.clip(eye.radius * (1 - np.sqrt(r2)) + 0.5, 0, 1)  # soft FOV edge, black outside
    planes = []
    for band in pil.split():
        p = np.asarray(band, np.float32) + noise
        p *= fov
        planes.append(Image.fromarray(np.clip(p, 0, 255).astype(np.uint8)))
    pil = Image.merge("RGB", planes)
    if eye.right:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(pil)


def render_eye(
    grade: int, rng: np.random.Generator, cam: Camera, scale: float
) -> tuple[np.ndarray, bool]:
    """Image and whether it shows macular exudates. Lesions draw from their own stream, so
    one seed gives the same eye and camera at every grade and lesion scale."""
    lesion_rng = np.random.default_rng(rng.integers(2**63))
    eye = _sample_eye(rng, cam)
    yy, xx = np.ogrid[0 : eye.h, 0 : eye.w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    img = _anatomy(rng, eye, xx, yy)
    vessels = vascular_tree(rng, eye)
    masks = Masks(eye.h, eye.w)
    draw_vessels(masks, vessels)
    dme = draw_lesions(lesion_rng, eye, grade, scale, masks, vessels)
    diameter = 2 * eye.radius
    for name, (tint, blur) in TINTS.items():
        if layer := masks.alpha(name, blur * diameter):
            (by, bx), a = layer
            img[:, by, bx] *= 1 - a * (1 - tint)
    for name, (colour, blur) in BRIGHT.items():
        if layer := masks.alpha(name, blur * diameter):
            (by, bx), a = layer
            sub = img[:, by, bx]
            sub += a * (colour - sub)
    return _camera(rng, img, eye, cam, xx, yy), dme


def render_fundus(
    grade: int, rng: np.random.Generator, camera: Camera, lesion_scale: float = 1.0
) -> np.ndarray:
    """One synthetic fundus photograph, (H, W, 3) uint8, before any JPEG compression.

    `lesion_scale` multiplies lesion size and (up to 1) contrast; smaller is harder.
    The same generator state gives the same eye at every grade."""
    if grade not in range(5):
        raise ValueError(f"grade must be 0-4, got {grade!r}")
    return render_eye(grade, rng, camera, lesion_scale)[0]
