"""The retinal vessel tree of a synthetic fundus photograph: grown from the disc, drawn as masks.

Geometry is in native pixel coordinates (x right, y down), as in canvas.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retfound_hpo.data.demo.canvas import Eye, Masks, stroke


@dataclass
class Vessel:
    """One unbranched vessel segment."""

    points: np.ndarray  # (N, 2) centre line
    widths: np.ndarray  # (N,) calibre in px
    vein: bool
    depth: int  # 0 = trunk leaving the disc


MIN_VESSEL_WIDTH = 0.6  # px; thinner vessels end


def grow(
    rng: np.random.Generator,
    eye: Eye,
    out: list[Vessel],
    start: np.ndarray,
    heading: float,
    width: float,
    bend: float,
    bend_len: float,
    vein: bool,
    depth: int = 0,
) -> None:
    """Grow one vessel (vectorised along its length) and, recursively, its branches.

    `bend` (rad/px) decays over `bend_len` px, so trunks arc and then straighten, like the
    temporal arcades around the macula. Each branch point narrows the parent.
    """
    step, radius = eye.step, eye.radius
    if width < MIN_VESSEL_WIDTH:
        return
    s = step * np.arange(1, int((2.2 if depth == 0 else 1.2) * radius / step) + 1)
    branch_at = np.searchsorted(s, np.cumsum(rng.uniform(0.12, 0.3, 12) * radius))
    branch_at = branch_at[branch_at < len(s)]
    drop = np.ones(len(s))
    drop[branch_at] = rng.uniform(0.85, 0.95, len(branch_at))
    widths = width * np.exp(-s / (3.0 * radius)) * np.cumprod(drop)
    n = int(np.searchsorted(-widths, -MIN_VESSEL_WIDTH, side="right"))  # widths only decrease
    if n < 3:
        return
    s, widths = s[:n], widths[:n]
    wiggle = rng.normal(0, 0.4 * math.sqrt(step / radius), n)  # tortuosity independent of step
    heading_s = heading + np.cumsum(bend * np.exp(-s / bend_len) * step + wiggle)
    pts = start + np.cumsum(step * np.stack([np.cos(heading_s), np.sin(heading_s)], 1), 0)
    inside = np.hypot(*(pts - eye.centre).T) < radius * 0.985
    ok = inside & (np.hypot(*(pts - eye.fovea).T) > 0.4 * eye.dd)  # foveal avascular zone
    end = int(np.argmin(ok)) if not ok.all() else n
    if end < 3:
        return
    out.append(Vessel(np.vstack([start, pts[:end]]), np.r_[width, widths[:end]], vein, depth))
    if depth >= 3:
        return
    for i in branch_at[branch_at < end]:
        side = 1.0 if rng.random() < 0.5 else -1.0
        child_w = widths[i] * rng.uniform(0.4, 0.75)
        grow(
            rng,
            eye,
            out,
            pts[i],
            heading_s[i] + side * rng.uniform(0.45, 1.1),
            child_w,
            side * rng.uniform(0.0, 1.2) / radius,
            radius,
            vein,
            depth + 1,
        )


def vascular_tree(rng: np.random.Generator, eye: Eye) -> list[Vessel]:
    """Arteries and veins leaving the disc: temporal arcades arching above and below the
    macula, nasal trunks, and thin macular branches. Main veins are ~0.0105 FOV diameters."""
    radius, out, vein_width = eye.radius, [], 0.021 * eye.radius
    trunks = []  # (heading, bend rad/px, bend length px, calibre relative to the main vein)
    for sign in (-1.0, 1.0):  # superior, inferior
        turn, length = rng.uniform(1.5, 1.9), rng.uniform(0.35, 0.5) * radius
        trunks.append(
            (sign * (np.pi / 2 - rng.uniform(0.1, 0.4)), -sign * turn / length, length, 1.0)
        )
        trunks.append(
            (
                sign * (np.pi / 2 + rng.uniform(0.35, 0.8)),
                sign * 0.5 / radius,
                radius,
                rng.uniform(0.6, 0.8),
            )
        )
        trunks.append((sign * rng.uniform(0.15, 0.45), 0.0, radius, rng.uniform(0.3, 0.45)))
    trunks.append((np.pi + rng.normal(0, 0.25), 0.0, radius, rng.uniform(0.45, 0.6)))
    for heading, bend, length, rel in trunks:
        for vein in (True, False):
            start = np.asarray(eye.disc) + rng.normal(0, 0.012 * radius, 2)
            w = vein_width * rel * (1.0 if vein else rng.uniform(0.68, 0.78))
            h = heading + rng.normal(0, 0.1)
            grow(rng, eye, out, start, h, w, bend * rng.uniform(0.9, 1.1), length, vein)
    return out


def draw_vessels(masks: Masks, vessels: list[Vessel]) -> None:
    for v in vessels:
        stroke(masks["vein" if v.vein else "artery"], v.points, v.widths)
        if not v.vein and v.widths[0] > 2.5:  # central light reflex on larger arteries
            stroke(masks["reflex"], v.points, v.widths * 0.28, 140)
