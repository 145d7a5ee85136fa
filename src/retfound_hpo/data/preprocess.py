"""Crop fundus photographs to the retina disc, square them, resize once, and cache the result.

A prepared set is a folder with `images.npy` (N, S, S, 3) uint8 and `index.csv` (id, grade, patient,
path). Trials memory-map `images.npy`, so no source image is decoded twice.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

BORDER_THRESHOLD = 12  # channel-max level below which a pixel counts as black border (0-255)
MASK_SIDE = 512  # the disc is located on a thumbnail this size, then cropped at full resolution


def crop_to_disc(img: Image.Image) -> Image.Image:
    """Crop to the bounding box of the non-black field of view and pad to a square."""
    thumb = img.copy()
    thumb.thumbnail((MASK_SIDE, MASK_SIDE))
    mask = np.asarray(thumb).max(axis=2) > BORDER_THRESHOLD  # (h, w)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:  # all black: nothing to crop to
        box = (0, 0, img.width, img.height)
    else:
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


def load_image(path: str | Path) -> Image.Image:
    """Open any PIL-readable image as 8-bit RGB."""
    with Image.open(path) as img:
        img.draft("RGB", (1024, 1024))  # JPEG: decode at reduced scale when much larger
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale down to 8 bits
            arr = np.asarray(img, dtype=np.float32)
            img = Image.fromarray((arr * 255.0 / max(arr.max(), 1.0)).astype(np.uint8))
        return img.convert("RGB")


def preprocess_image(path: str | Path, size: int) -> np.ndarray:
    """Load, crop to the disc, square and resize one image: (size, size, 3) uint8."""
    img = crop_to_disc(load_image(path))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def prepare_images(
    table: pd.DataFrame, out_dir: str | Path, size: int, workers: int | None = None
) -> Path:
    """Preprocess every image in `table` into a cache folder, written whole or not at all."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = np.lib.format.open_memmap(
        tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3)
    )
    workers = workers or os.cpu_count() or 1
    work = partial(preprocess_image, size=size)
    paths = table["path"].tolist()
    bar = tqdm(total=len(paths), desc=f"prepare {out_dir.name}", unit="img", disable=None)
    if workers == 1:
        results = map(work, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(work, paths, chunksize=16)
    try:
        for i, arr in enumerate(results):
            images[i] = arr
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    images.flush()
    del images
    table[["id", "grade", "patient", "path"]].to_csv(tmp / "index.csv", index=False)
    # Swap in the finished folder only now: an interrupted run leaves no cache that looks valid.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("prepared %d images at %d px into %s", len(table), size, out_dir)
    return out_dir


def load_prepared(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map a prepared set: images (N, S, S, 3) uint8 and its index table."""
    folder = Path(folder)
    index = pd.read_csv(folder / "index.csv", dtype={"id": str, "patient": str})
    images = np.load(folder / "images.npy", mmap_mode="r")
    if len(images) != len(index):
        raise ValueError(f"{folder}: images.npy has {len(images)} images, index.csv {len(index)}")
    return images, index
