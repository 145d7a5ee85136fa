"""Crop fundus photographs to the retina disc, square them, resize once, and cache the result.

Photographs are turned upright (EXIF orientation) first; an image without a retina is as bad as
an unreadable one. A prepared set is a folder with `images.npy` (N, S, S, 3) uint8 and `index.csv`
(id, grade, patient, path). Trials read `images.npy` an image at a time (prepared.py), so no
source image is decoded twice, a trial's memory does not grow with the data set, and the source
resolution no longer matters once prepared. A folder is built as `<name>.tmp` and renamed when
complete; a failed or interrupted run removes it.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.core.system import usable_cpus
from retfound_hpo.data.formats import SKIP_HINT

log = logging.getLogger(__name__)

BORDER_THRESHOLD = 12  # channel-max level below which a pixel counts as black border (0-255)
MASK_SIDE = 512  # the disc is located on a thumbnail this size, then cropped at full resolution
# Fraction of the frame above BORDER_THRESHOLD below which no retina is found. Real fundus
# photographs fill 30-90 % of the frame (clipped ones more), the demo's at least 45 %; an all
# black or badly under-exposed frame fills almost none and would train on noise.
MIN_RETINA_FRACTION = 0.05
SHOW_FAILURES = 5  # unusable images named in the error message
# What a fundus photograph can be: its shorter side at least half the model's input (a smaller
# one would be blown up into blur) and never under 16 px; at most MAX_ASPECT wide as it is high
# (cameras frame 1:1 to about 1.6:1); some detail in the field (a uniform frame holds none); not
# mostly overexposed (every channel >= 250 over most of the field).
MIN_SIDE = 16
MAX_ASPECT = 2.5
MIN_DETAIL_STD = 4.0
MAX_WHITE_FRACTION = 0.5


class NoRetinaError(ValueError):
    """An image in which no retina can be found: almost all of it is as dark as the border,
    or it cannot be a fundus photograph at all (too small, a strip, blank or white)."""


def check_photograph(path: str | Path, size: int) -> None:
    """Raise NoRetinaError when the file's frame cannot be a fundus photograph (size, shape);
    reads only the image header."""
    with Image.open(path) as head:
        w, h = head.size
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise NoRetinaError(
            f"not a fundus photograph: {w}x{h} px, an aspect ratio of {max(w, h) / min(w, h):.1f}"
            f":1 (fundus cameras frame 1:1 to about 1.6:1; at most {MAX_ASPECT}:1 is accepted)"
        )
    smallest = max(MIN_SIDE, size // 2)
    if min(w, h) < smallest:
        raise NoRetinaError(
            f"not a fundus photograph: {w}x{h} px, too small (the shorter side must be at least "
            f"{smallest} px for {size} px inputs)"
        )


def crop_to_disc(img: Image.Image) -> Image.Image:
    """Crop to the bounding box of the non-black field of view and pad to a square; raise
    NoRetinaError when too little of the image is brighter than the border."""
    thumb = img.copy()
    thumb.thumbnail((MASK_SIDE, MASK_SIDE))
    mask = np.asarray(thumb).max(axis=2) > BORDER_THRESHOLD  # (h, w)
    if mask.mean() < MIN_RETINA_FRACTION:
        raise NoRetinaError(
            f"no retina found: only {100 * mask.mean():.1f} % of the image is brighter than the "
            f"black border, expected at least {100 * MIN_RETINA_FRACTION:.0f} %"
        )
    field = np.asarray(thumb)[mask].astype(np.float32)  # (n, 3) pixels brighter than the border
    white = (field >= 250).all(axis=1).mean()
    if white > MAX_WHITE_FRACTION:
        raise NoRetinaError(
            f"not a fundus photograph: {100 * white:.0f} % of the field is pure white "
            "(overexposed, or not a retina)"
        )
    if field.mean(axis=1).std() < MIN_DETAIL_STD:
        raise NoRetinaError(
            "not a fundus photograph: a uniform frame, no vessels or detail "
            f"(brightness varies by {field.mean(axis=1).std():.1f} of 255)"
        )
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sx, sy = img.width / thumb.width, img.height / thumb.height
    box = (
        int(cols[0] * sx),
        int(rows[0] * sy),
        min(img.width, int(np.ceil((cols[-1] + 1) * sx))),
        min(img.height, int(np.ceil((rows[-1] + 1) * sy))),
    )
    img = img.crop(box)
    # Pad the shorter side with black so a clipped disc keeps its aspect ratio.
    side = max(img.size)
    square = Image.new("RGB", (side, side))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open any PIL-readable image as 8-bit RGB, decoded no larger than needed.

    With `min_side`, a large image is shrunk while its shorter side stays >= `min_side`: JPEGs
    decode at 1/2, 1/4 or 1/8 scale (`draft`), others are box-reduced right after decoding, so
    a 5000 px photograph never reaches the crop at full size. An EXIF orientation (phones, some
    cameras) is applied, so the image is upright. Truncated or corrupt files raise.
    """
    with Image.open(path) as img:
        if min_side:
            img.draft("RGB", (min_side, min_side))  # JPEG only; a no-op for other formats
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # a square draft request fits either way
        if img.mode in ("P", "PA"):  # palette (maybe with transparency): expand first
            img = img.convert("RGBA")
        elif img.mode == "1" or img.mode.startswith("I;16"):  # modes `reduce` cannot handle
            img = img.convert("L" if img.mode == "1" else "I")
        factor = min(img.size) // min_side if min_side else 1
        if factor > 1:
            img = img.reduce(factor)
        if img.mode in ("I", "F"):  # 16-bit or float: stretch the image's range to 8 bits
            arr = np.asarray(img, dtype=np.float32)
            arr = np.clip(arr * (255.0 / max(float(arr.max()), 1.0)), 0, 255)
            img = Image.fromarray(arr.astype(np.uint8))
        return img.convert("RGB")


def preprocess_image(path: str | Path, size: int) -> np.ndarray:
    """Load, crop to the disc, square and resize one image: (size, size, 3) uint8."""
    check_photograph(path, size)
    # Twice the output size survives the crop with margin: the disc spans most of the short side.
    img = crop_to_disc(load_image(path, min_side=2 * size))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def _preprocess_or_reason(path: str, size: int) -> np.ndarray | str:
    """preprocess_image, or why it failed: one bad file must not stop the other workers."""
    try:
        return preprocess_image(path, size)
    except NoRetinaError as e:  # the message says it all
        return str(e)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError
        return f"{type(e).__name__}: {e}"


def _decode_all(
    paths: list[str], images: np.ndarray, size: int, workers: int, desc: str
) -> list[tuple[int, str]]:
    """Write the readable images to `images` in order, packed; return (position, reason) of
    the others."""
    work = partial(_preprocess_or_reason, size=size)
    failures: list[tuple[int, str]] = []
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(work, paths, chunksize=16) if pool else map(work, paths)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=None)
    try:
        for i, result in enumerate(results):
            if isinstance(result, str):
                failures.append((i, result))
            else:
                images[i - len(failures)] = result
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return failures


def _report(table: pd.DataFrame, failures: list[tuple[int, str]], source: str, skip: bool) -> None:
    """Stop naming the first unusable images and their count, or (skip) warn about each."""
    if not failures:
        return
    # read_dataset indexes tables by their labels file line ("row"); other tables have no rows.
    named = table.index.name == "row"
    lines = [
        f"{f'row {table.index[i]} ' if named else ''}{table['path'].iloc[i]} ({reason})"
        for i, reason in failures
    ]
    if skip:
        for line in lines:
            log.warning("%s: unusable image, skipped: %s", source, line)
        return
    shown = "; ".join(lines[:SHOW_FAILURES])
    more = f"; ... and {len(lines) - SHOW_FAILURES} more" if len(lines) > SHOW_FAILURES else ""
    raise DatasetError(
        f"{source}: {len(lines)} unusable image(s) of {len(table)}: {shown}{more} ({SKIP_HINT})"
    )


def _shrink(npy: Path, n: int) -> None:
    """Keep the first `n` images of a .npy file (those decoded when some were skipped)."""
    full = np.load(npy, mmap_mode="r")
    part = np.lib.format.open_memmap(
        npy.with_suffix(".part.npy"), mode="w+", dtype=full.dtype, shape=(n, *full.shape[1:])
    )
    for start in range(0, n, 1024):  # chunked: never holds the set in memory
        stop = min(start + 1024, n)
        part[start:stop] = full[start:stop]
    part.flush()
    del full, part
    npy.with_suffix(".part.npy").replace(npy)


def prepare_images(
    table: pd.DataFrame,
    out_dir: str | Path,
    size: int,
    workers: int | None = None,
    *,
    skip_bad_rows: bool = False,
    source: str | Path | None = None,
) -> Path:
    """Preprocess every image in `table` into a cache folder, written whole or not at all.

    An unusable image (unreadable, no retina) stops the run with a DatasetError naming `source`
    (the labels file), the first few images and the count; `skip_bad_rows` leaves them out.
    """
    out_dir = Path(out_dir)
    source = str(source or out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    # DVC removes outputs before a stage runs; do the same, so no stale cache outlives a failure.
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3)
        )
        workers = workers or usable_cpus()
        failures = _decode_all(
            table["path"].tolist(), images, size, workers, f"prepare {out_dir.name}"
        )
        images.flush()
        del images
        _report(table, failures, source, skip_bad_rows)
        readable = np.ones(len(table), dtype=bool)
        readable[[i for i, _ in failures]] = False
        kept = table[readable]
        if kept.empty:
            raise DatasetError(f"{source}: none of the {len(table)} images is usable")
        if failures:
            _shrink(tmp / "images.npy", len(kept))
        kept[["id", "grade", "patient", "path"]].to_csv(tmp / "index.csv", index=False)
    except BaseException:  # failures and interrupts alike: leave nothing that looks like a cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out_dir)  # the finished folder appears in one step
    log.info("prepared %d images at %d px into %s", len(kept), size, out_dir)
    return out_dir
