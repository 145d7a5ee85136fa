"""The DR lesions of each ICDR grade, drawn on a synthetic fundus photograph's masks."""

from __future__ import annotations

import math

import numpy as np

from retfound_hpo.data.demo.canvas import (
    Eye,
    Masks,
    blob,
    boat,
    disk,
    fov_points,
    polygon,
    stroke,
    tangle,
)
from retfound_hpo.data.demo.vessels import Vessel


def draw_lesions(
    rng: np.random.Generator,
    eye: Eye,
    grade: int,
    scale: float,
    masks: Masks,
    vessels: list[Vessel],
) -> bool:
    """Draw the DR lesions of `grade` (ICDR 0-4); `scale` multiplies size and contrast.
    Sizes are fractions of the FOV diameter D. Returns whether hard exudates lie near the
    fovea (diabetic macular oedema)."""
    D, c, dme = 2 * eye.radius, min(1.0, scale), False
    if grade == 0:
        return dme
    # Microaneurysms: ~0.025 D, i.e. >= 2 px after cropping the retina to 96 px.
    n_ma = {1: (3, 7), 2: (6, 14), 3: (10, 20), 4: (8, 18)}[grade]
    for x, y in fov_points(rng, eye, int(rng.integers(*n_ma, endpoint=True))):
        disk(masks["blood"], x, y, 0.5 * rng.uniform(0.022, 0.03) * D * scale, 235 * c)
    if grade == 1:
        return dme
    n_haem = int(rng.integers(3, 9) if grade == 2 else rng.integers(5, 9))
    for q in [None] if grade == 2 else range(4):  # severe NPDR: in all four quadrants
        for x, y in fov_points(rng, eye, n_haem, q):  # dot/blot: a few overlapping lobes
            r, v = 0.5 * rng.uniform(0.025, 0.05) * D * scale, rng.uniform(150, 230) * c
            for _ in range(int(rng.integers(1, 4))):
                ox, oy = rng.normal(0, 0.35 * r, 2)
                outline = blob(
                    rng, x + ox, y + oy, r, r * rng.uniform(0.7, 1), rng.uniform(0, np.pi), 0.3
                )
                polygon(masks["blood"], outline, v)
    for x, y in fov_points(rng, eye, int(rng.integers(0, 3 if grade == 2 else 6))):
        ang = math.atan2(y - eye.disc[1], x - eye.disc[0])  # flames follow the nerve fibres
        ln = rng.uniform(0.04, 0.08) * D * scale
        polygon(masks["blood"], blob(rng, x, y, ln / 2, ln / 6, ang, 0.1), 220 * c)
    if rng.random() < (0.75 if grade == 2 else 0.65):  # hard exudates: yellow clusters
        for _ in range(int(rng.integers(1, 4))):
            off, ang = rng.uniform(0.8, 2.5) * eye.dd, rng.uniform(0, 2 * np.pi)
            cx, cy = eye.fovea[0] + off * math.cos(ang), eye.fovea[1] + off * math.sin(ang)
            dme |= off < 1.6 * eye.dd
            k = int(rng.integers(6, 26))
            if rng.random() < 0.3:  # circinate ring around a leaking area
                t = rng.uniform(0, 1.5 * np.pi) + np.linspace(0, rng.uniform(2, 5), k)
                rr = rng.uniform(0.05, 0.09) * D
                pts = np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)
                pts += rng.normal(0, 0.006 * D, pts.shape)
            else:
                pts = np.array([cx, cy]) + rng.normal(0, rng.uniform(0.015, 0.04) * D, (k, 2))
            for (x, y), r in zip(pts, rng.uniform(0.004, 0.012, k) * D * scale, strict=True):
                polygon(masks["exudate"], blob(rng, x, y, r, wobble=0.4, n=8), 240 * c)
    if grade == 2:
        return dme
    for _ in range(int(rng.integers(2, 7))):  # cotton-wool spots, near the arcades
        v = vessels[rng.integers(len(vessels))]
        x, y = v.points[rng.integers(len(v.points))] + rng.normal(0, 0.03 * D, 2)
        if math.hypot(x - eye.centre[0], y - eye.centre[1]) < 0.88 * eye.radius:
            r = 0.5 * rng.uniform(0.05, 0.09) * D * scale
            outline = blob(rng, x, y, r, r * rng.uniform(0.6, 0.9), rng.uniform(0, np.pi), 0.45)
            polygon(masks["cws"], outline, 170 * c)
    veins = [v for v in vessels if v.vein and v.depth <= 1 and len(v.points) > 30]
    for i in rng.permutation(len(veins))[: int(rng.integers(1, 4))]:  # venous beading
        v, a = veins[i], int(rng.integers(3, len(veins[i].points) - 25))
        for j in range(a, a + 24, 3):
            disk(masks["vein"], *v.points[j], 0.5 * v.widths[j] * (1 + 0.8 * scale))
    if grade == 3:
        return dme
    for _ in range(int(rng.integers(1, 3))):  # neovascularisation at the disc or an arcade
        if rng.random() < 0.5 or not veins:
            x, y = np.asarray(eye.disc) + rng.normal(0, 0.35 * eye.dd, 2)
        else:
            v = veins[rng.integers(len(veins))]
            x, y = v.points[rng.integers(len(v.points) // 3, len(v.points))]
        for loop in tangle(rng, x, y, 0.025 * D, 0.007 * D * scale, int(rng.integers(8, 16))):
            stroke(masks["nv"], loop, np.full(len(loop), 0.005 * D * scale), 255 * c)
        if rng.random() < 0.4:  # fibrous tissue veiling the frond
            disk(masks["fibrous"], x, y, 0.05 * D * scale, 150 * c)
    if rng.random() < 0.7:  # pre-retinal haemorrhage: boat-shaped, fluid level on top
        for x, y in fov_points(rng, eye, 1):
            hw = 0.5 * rng.uniform(0.12, 0.22) * D * scale
            polygon(masks["blood"], boat(x, y, hw, hw * rng.uniform(0.5, 0.8)), 255 * c)
    return dme
