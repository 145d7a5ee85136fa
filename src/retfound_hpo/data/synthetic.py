"""Synthetic fundus photographs with DR grades 0-4: the embedded demo data set.

Anatomy (FOV, optic disc and cup, macula, arteries and veins) and DR lesions are drawn with
sizes relative to the FOV diameter D. At `lesion_scale=1` a microaneurysm is ~0.025 D across,
i.e. ~2.4 px once the retina is cropped and resized to 96 px (real ones are ~1 px there).
Calibration on 2 CPU cores (lr 3e-3): LoRA on the 96 px demo ViT learned nothing in 6 epochs at 1.0,
started at epoch 5 at 1.5 and at epoch 3 at 2.0 (val kappa 0.86), so the demo uses 2.0.
Smaller `lesion_scale` shrinks lesions and lowers their contrast (harder, more realistic).
Two cameras mimic APTOS-2019 and Messidor-2.

Every image comes from its own generator, `default_rng([seed, domain, index])`, so serial and
parallel runs write identical bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from retfound_hpo.data import fundus_draw as fd
from retfound_hpo.data import fundus_vessels

log = logging.getLogger(__name__)

GRADE_PROBS: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)  # APTOS-2019 (sums to 0.99)
UNGRADABLE_FRACTION = 0.02  # extra Messidor rows marked ungradable


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


def grade_counts(n: int, probs=GRADE_PROBS) -> list[int]:
    """Exact per-grade counts summing to n: floor of the quotas, then largest remainders."""
    quotas = np.asarray(probs, dtype=float) / np.sum(probs) * n
    counts = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def _sample_eye(rng: np.random.Generator, cam: Camera) -> fd.Eye:
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
    return fd.Eye(h, w, (cx, cy), r, disc, dd, fovea, bool(rng.random() < 0.5))


def _box(eye: fd.Eye, c: tuple[float, float], half: float) -> tuple[slice, slice]:
    """Slices of the window of half-size `half` around c, clipped to the image."""
    y0, x0 = max(int(c[1] - half), 0), max(int(c[0] - half), 0)
    y1, x1 = min(int(c[1] + half) + 2, eye.h), min(int(c[0] + half) + 2, eye.w)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _soft_ellipse(xx, yy, c, rx, ry, edge) -> np.ndarray:
    q = np.sqrt(((xx - c[0]) / rx) ** 2 + ((yy - c[1]) / ry) ** 2)
    return np.clip((1 - q) / edge + 0.5, 0, 1)


def _anatomy(rng, eye: fd.Eye, xx, yy) -> np.ndarray:
    """Planar reflectance of a healthy retina: mottled choroid, macula, disc with cup."""
    base = FUNDUS_LIGHT + np.float32(rng.beta(1.5, 1.5)) * (FUNDUS_DARK - FUNDUS_LIGHT)
    mottle = fd.smooth_noise(rng, eye.h, eye.w, 9, 0.07)  # choroidal blotches ...
    mottle += fd.smooth_noise(rng, eye.h, eye.w, 70, 0.03)  # ... and grain
    mottle += 1
    img = mottle * base
    hue = fd.smooth_noise(rng, eye.h, eye.w, 24, 0.08)  # uneven pigment: red vs the rest
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


def _camera(rng, img: np.ndarray, eye: fd.Eye, cam: Camera, xx, yy) -> np.ndarray:
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


def _render(
    grade: int, rng: np.random.Generator, cam: Camera, scale: float
) -> tuple[np.ndarray, bool]:
    """Image and whether it shows macular exudates. Lesions draw from their own stream, so
    one seed gives the same eye and camera at every grade and lesion scale."""
    lesion_rng = np.random.default_rng(rng.integers(2**63))
    eye = _sample_eye(rng, cam)
    yy, xx = np.ogrid[0 : eye.h, 0 : eye.w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    img = _anatomy(rng, eye, xx, yy)
    vessels = fundus_vessels.vascular_tree(rng, eye)
    masks = fd.Masks(eye.h, eye.w)
    fundus_vessels.draw_vessels(masks, vessels)
    dme = fd.draw_lesions(lesion_rng, eye, grade, scale, masks, vessels)
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
    return _render(grade, rng, camera, lesion_scale)[0]


def _make_image(job: tuple) -> tuple:
    """Render and save one image, return its CSV row. Runs in worker processes."""
    domain, index, grade, seed, scale, image_dir = job
    rng = np.random.default_rng([seed, domain, index])
    if domain == 0:
        name = rng.bytes(6).hex()  # APTOS ids are 12 hex digits
        img, _ = _render(grade, rng, CAMERA_A, scale)
        # Sensor noise makes PNG barely compressible: zlib's fast RLE mode is as small.
        Image.fromarray(img).save(image_dir / f"{name}.png", compress_level=1, compress_type=3)
        return (name, grade)
    # Messidor names: exam date, a unique running number, camera/eye code.
    date = dt.date(2005, 1, 10) + dt.timedelta(days=index // 24)
    name = f"{date:%Y%m%d}_{10000 + 7 * index + int(rng.integers(7)):05d}_0100_PP.jpg"
    shown = grade if grade is not None else int(rng.integers(5))  # what lies under the blur
    img, dme = _render(shown, rng, CAMERA_B, scale)
    if grade is None:  # ungradable: defocused and badly exposed
        pil = Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(5, 10)))
        img = np.clip(np.asarray(pil) * rng.choice([0.35, 1.8]), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(image_dir / name, quality=CAMERA_B.jpeg_quality)
    if grade is None:
        return (name, "", "", 0)
    return (name, grade, int(dme and grade >= 2 and rng.random() < 0.9), 1)


def _run(jobs: list[tuple], workers: int) -> list[tuple]:
    """Rows of `jobs` in order; workers=1 renders in this process."""
    rows = []
    with tqdm(total=len(jobs), desc="synthetic fundus", unit="img", disable=None) as bar:
        if workers <= 1:
            for job in jobs:
                rows.append(_make_image(job))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for row in pool.map(_make_image, jobs, chunksize=8):
                    rows.append(row)
                    bar.update()
    return rows


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_demo_datasets(
    out_dir: Path,
    n_domain_a: int,
    n_domain_b: int,
    seed: int,
    lesion_scale: float = 1.0,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write domain A in APTOS-2019 layout and domain B in Messidor-2 layout; return
    {"aptos": dir, "messidor": dir}. Messidor gets ~2 % extra rows marked ungradable.

    Built in a sibling ".tmp" folder and swapped in at the end, so an interrupted run never
    leaves a complete-looking half data set. Output depends only on the arguments other than
    `workers` (default: all usable CPUs)."""
    out_dir = Path(out_dir)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    aptos, messidor = tmp / "aptos", tmp / "messidor"
    (aptos / "train_images").mkdir(parents=True)
    (messidor / "IMAGES").mkdir(parents=True)

    def shuffled_grades(domain: int, n: int, n_ungradable: int = 0) -> list[int | None]:
        g = [k for k, c in enumerate(grade_counts(n)) for _ in range(c)] + [None] * n_ungradable
        order = np.random.default_rng([seed, 1000 + domain]).permutation(len(g))
        return [g[i] for i in order]

    n_bad = max(round(UNGRADABLE_FRACTION * n_domain_b), int(n_domain_b > 0))
    jobs = [
        (0, i, g, seed, lesion_scale, aptos / "train_images")
        for i, g in enumerate(shuffled_grades(0, n_domain_a))
    ]
    jobs += [
        (1, i, g, seed, lesion_scale, messidor / "IMAGES")
        for i, g in enumerate(shuffled_grades(1, n_domain_b, n_bad))
    ]
    rows = _run(jobs, workers)
    rows_a, rows_b = rows[:n_domain_a], rows[n_domain_a:]
    if len({r[0] for r in rows_a}) != len(rows_a):  # 48-bit ids: practically never
        raise RuntimeError(f"seed {seed} gives a duplicate APTOS id; choose another seed")
    _write_csv(aptos / "train.csv", ["id_code", "diagnosis"], rows_a)
    _write_csv(
        messidor / "messidor_data.csv",
        ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
        rows_b,
    )

    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info(
        "wrote %d APTOS-like and %d (+%d ungradable) Messidor-like images to %s",
        n_domain_a,
        n_domain_b,
        n_bad,
        out_dir,
    )
    return {"aptos": out_dir / "aptos", "messidor": out_dir / "messidor"}
