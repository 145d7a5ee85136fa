"""Exact and near-duplicate photographs: a perceptual hash of the prepared image, and groups.

The hash reads the vessel pattern, which tells one eye from another, not the overall look:
fundus photographs are all a bright disc with an optic disc and a dark macula, so a classic
64-bit DCT pHash gives different eyes of one camera hashes 2 bits apart (demo camera A) while
a JPEG copy can differ by 16. From the prepared image (already cropped to the retina, squared
and resized, so the source resolution no longer matters) it takes the central square of the
disc in the green channel, keeps what is darker than its blurred surroundings (vessels,
haemorrhages), averages that on a 16 x 16 grid and sets a bit per cell above the median: 256
bits. Recompression and resampling move a few cells across the median; another eye about half.

Calibration on the demo, 96 px prepared images: between the 1,500 camera-A images the smallest
distance is 74 bits (0.01 % of pairs are under 84), between camera A and the 400 camera-B
images 70. A copy resized to 50-150 % or re-saved as JPEG at quality 70-90 is at most 42 bits
from its original, resized to 60 % at quality 75 44, resized to 40 % at quality 60 56. At
224 px (400 images) copies are closer (at most 32; 48 for 40 % at quality 60), different eyes
at least 78 apart. The default data.duplicate_distance, 60, sits between.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from retfound_hpo.data.prepared import PreparedImages

log = logging.getLogger(__name__)

HASH_GRID = 16  # cells per side: a 256-bit hash
HASH_BITS = HASH_GRID**2
BORDER_LEVEL = 20  # luma below which a pixel of the prepared image is border (0-255)
INNER = 0.6  # side of the hashed square / disc diameter: inside the disc even when clipped
MAP_SIDE = 64  # the square is resampled to this size before the vessel map
VESSEL_SIGMA = 2.0  # px at MAP_SIDE: dark structures up to ~4 px wide stand out
SHOW = 10  # groups and pairs logged one per line; the summary lists all


def image_hash(image: np.ndarray) -> np.ndarray:
    """The 256-bit perceptual hash of one prepared image (S, S, 3) uint8, packed: (32,) uint8."""
    pil = Image.fromarray(image)
    # Re-find the disc: JPEG ringing in a border can widen the prepared crop by a pixel or two.
    bright = np.asarray(pil.convert("L")) > BORDER_LEVEL  # (S, S)
    if bright.any():
        rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    else:  # an all-dark image: hash the frame
        top, left, (bottom, right) = 0, 0, bright.shape
    cy, cx = (top + bottom) / 2, (left + right) / 2
    half = INNER * max(bottom - top, right - left) / 2  # a clipped disc keeps its full width
    square = pil.getchannel("G").crop((cx - half, cy - half, cx + half, cy + half))
    green = np.asarray(square.resize((MAP_SIDE, MAP_SIDE), Image.Resampling.BICUBIC), np.float32)
    vessels = np.maximum(gaussian_filter(green, VESSEL_SIGMA) - green, 0)  # (64, 64)
    cells = Image.fromarray(vessels).resize((HASH_GRID, HASH_GRID), Image.Resampling.BOX)
    cells = np.asarray(cells).reshape(-1)  # (256,)
    return np.packbits(cells > np.median(cells))


def hash_images(images: np.ndarray | PreparedImages, chunk: int = 512) -> np.ndarray:
    """Hashes of a prepared set's images (N, S, S, 3), read a chunk at a time: (N, 32) uint8."""
    out = np.empty((len(images), HASH_BITS // 8), np.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]  # (n, S, S, 3)
        out[start : start + len(block)] = [image_hash(img) for img in block]
    return out


def close_pairs(
    a: np.ndarray, b: np.ndarray | None, max_distance: int, chunk: int = 1024
) -> np.ndarray:
    """Pairs (i, j, distance) of hashes at most `max_distance` bits apart: (P, 3) int.

    Between `a` and `b`, or within `a` (i < j) when `b` is None. For +-1 vectors the dot
    product is bits - 2 * distance, so one matrix product per block of rows gives every
    distance, and 35,000 hashes never need a 35,000^2 matrix.
    """
    signs_a = np.unpackbits(a, axis=1).astype(np.float32) * 2 - 1  # (N, 256)
    signs_b = signs_a if b is None else np.unpackbits(b, axis=1).astype(np.float32) * 2 - 1
    found = [np.empty((0, 3), np.int64)]
    for start in range(0, len(signs_a), chunk):
        dots = signs_a[start : start + chunk] @ signs_b.T  # (n, M)
        i, j = np.nonzero(dots >= HASH_BITS - 2 * max_distance - 0.5)
        distance = np.rint((HASH_BITS - dots[i, j]) / 2).astype(np.int64)
        keep = j > i + start if b is None else slice(None)
        found.append(np.stack([i[keep] + start, j[keep], distance[keep]], axis=1))
    return np.concatenate(found)


def find_duplicates(table: pd.DataFrame, hashes: np.ndarray, max_distance: int) -> list[dict]:
    """Groups of images linked by chains of close hashes (`hashes` in table order), as records:
    ids, grades, rows (table index), patients, the largest distance of a link, and whether
    the grades conflict."""
    pairs = close_pairs(hashes, None, max_distance)
    n = len(hashes)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    link = pd.Series(pairs[:, 2]).groupby(labels[pairs[:, 0]]).max()  # per group label
    records = []
    for label, members in pd.Series(np.arange(n)).groupby(labels).agg(list).items():
        if len(members) < 2:
            continue
        part = table.iloc[members]
        records.append(
            {
                "ids": part["id"].tolist(),
                "grades": [int(g) for g in part["grade"]],
                "rows": [_plain(r) for r in part.index],
                "patients": sorted(set(part["patient"])),
                "max_link_distance": int(link[label]),
                "conflicting": part["grade"].nunique() > 1,
            }
        )
    return records


def drop_conflicting(table: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """The table without the images of groups whose grades conflict; marks those records."""
    for record in records:
        record["dropped"] = record["conflicting"]
    dropped = [row for record in records if record["dropped"] for row in record["rows"]]
    return table.drop(index=dropped)


def duplicate_groups(table: pd.DataFrame, records: list[dict]) -> pd.Series:
    """Each row's duplicate group (`dup<k>`, k counting the kept groups), empty where the image
    has no duplicate; units.resampling_units joins the patients that share one."""
    groups = pd.Series("", index=table.index, name="duplicate_group", dtype=object)
    kept = [record for record in records if not record.get("dropped")]
    for k, record in enumerate(kept):
        groups.loc[record["rows"]] = f"dup{k}"
    return groups


def duplicates_summary(records: list[dict], splits: dict[str, pd.DataFrame]) -> dict:
    """Counts and groups for the data summary; each kept group gets the split that holds it."""
    split_of = {row: name for name, part in splits.items() for row in part.index}
    for record in records:
        record.setdefault("dropped", False)
        record["split"] = split_of.get(record["rows"][0])  # None: dropped
    return {
        "groups": len(records),
        "images": sum(len(r["ids"]) for r in records),
        "conflicting_groups": sum(r["conflicting"] for r in records),
        "dropped_images": sum(len(r["ids"]) for r in records if r["dropped"]),
        "cross_dataset": {},  # filled per evaluation set by cross_duplicates
        "group_list": records,
    }


def cross_duplicates(
    external: pd.DataFrame,
    external_hashes: np.ndarray,
    splits: dict[str, pd.DataFrame],
    split_hashes: dict[str, np.ndarray],
    max_distance: int,
) -> dict:
    """Images of an evaluation set that are duplicates of images in the splits: each with its
    closest split image."""
    table = pd.concat(splits.values(), keys=list(splits), names=["split"]).reset_index("split")
    hashes = np.concatenate([split_hashes[name] for name in splits])
    pairs = pd.DataFrame(
        close_pairs(external_hashes, hashes, max_distance), columns=["i", "j", "d"]
    )
    closest = pairs.sort_values(["i", "d", "j"]).drop_duplicates("i")  # one per evaluation image
    found = [
        {
            "id": external["id"].iloc[i],
            "row": _plain(external.index[i]),
            "grade": int(external["grade"].iloc[i]),
            "duplicate_of": table["id"].iloc[j],
            "duplicate_row": _plain(table.index[j]),
            "duplicate_grade": int(table["grade"].iloc[j]),
            "split": table["split"].iloc[j],
            "distance": int(d),
        }
        for i, j, d in closest.itertuples(index=False)
    ]
    return {"images": len(found), "pairs": found}


def log_duplicates(report: dict) -> None:
    """A line for the groups, one per group (the first SHOW), and the same for each evaluation
    set's duplicates of split images; conflicts and cross-set duplicates are warnings."""
    records = report["group_list"]
    dropped = f"; {report['dropped_images']} image(s) dropped" if report["dropped_images"] else ""
    across = ", ".join(
        f"{name} {found['images']}" for name, found in report["cross_dataset"].items()
    )
    log.info(
        "duplicates: %d group(s) of %d images, %d with conflicting grades%s%s",
        report["groups"],
        report["images"],
        report["conflicting_groups"],
        dropped,
        f"; evaluation images that duplicate split images: {across}" if across else "",
    )
    for record in records[:SHOW]:
        members = ", ".join(
            f"{i} (row {r}, grade {g})"
            for i, r, g in zip(record["ids"], record["rows"], record["grades"], strict=True)
        )
        where = "dropped" if record["dropped"] else f"in {record['split']}"
        if record["conflicting"]:
            log.warning("duplicate group %s, grades conflict: %s", where, members)
        else:
            log.info("duplicate group %s: %s", where, members)
    if len(records) > SHOW:
        log.info("... and %d more group(s), listed in the data summary", len(records) - SHOW)
    for name, found in report["cross_dataset"].items():
        if not found["images"]:
            continue
        log.warning(
            "%s: %d image(s) duplicate images of the train/val/test splits: not unseen photographs",
            name,
            found["images"],
        )
        for pair in found["pairs"][:SHOW]:
            log.warning(
                "%s: %s (row %s, grade %d) duplicates %s (row %s, grade %d) in %s",
                name,
                pair["id"],
                pair["row"],
                pair["grade"],
                pair["duplicate_of"],
                pair["duplicate_row"],
                pair["duplicate_grade"],
                pair["split"],
            )


def _plain(label):
    """A table index label as JSON writes it (numpy integers are not JSON)."""
    return int(label) if isinstance(label, np.integer) else label
