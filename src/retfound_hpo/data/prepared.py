"""A prepared set on disk: `images.npy` (N, S, S, 3) uint8 and `index.csv` (id, grade, patient,
path), as prepare-split writes it; read an image at a time, checked when opened."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from retfound_hpo.core.errors import DatasetError


def _unprepared(folder: Path, problem: str) -> DatasetError:
    """The error for a missing or damaged prepared set, with the two ways to get one."""
    return DatasetError(
        f"{folder}: {problem}; run `dvc repro prepare-split` here, or copy {folder.parent}/ "
        "from the machine that ran it"
    )


class PreparedImages:
    """The images of an images.npy file (N, S, S, 3) uint8, read on demand with plain reads.

    Not a memory map: pages of a mapped file count in the process's resident memory once
    touched, so an epoch over a memory map grows it by the whole data set. Read pages stay in
    the page cache, shared and reclaimable, and the process holds only the batch in hand.
    """

    def __init__(self, path: str | Path):
        self.path, name = Path(path), Path(path).name
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            except ValueError as e:
                raise _unprepared(self.path.parent, f"{name} is not a .npy file ({e})") from None
            self._offset = f.tell()
        if fortran or dtype != np.uint8 or len(shape) != 4:
            got = f"{shape} {dtype}{' in Fortran order' if fortran else ''}"
            raise _unprepared(
                self.path.parent, f"{name} holds {got}, not (N, S, S, 3) uint8 in C order"
            )
        self.shape, self.dtype = shape, dtype
        self._item = int(np.prod(shape[1:]))
        if os.path.getsize(self.path) < self._offset + len(self) * self._item:
            raise _unprepared(
                self.path.parent, f"{name} is truncated (fewer than {len(self)} images)"
            )
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.stack([self[i] for i in range(start, stop, step)])
            return self._read(start, max(0, stop - start))
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"image {key} out of range for {len(self)} images")
        return self._read(i, 1)[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.shape[1:]), np.uint8)
        view, done = memoryview(out.reshape(-1)), 0
        while done < out.nbytes:  # one read returns at most ~2 GiB
            n = os.preadv(self._fd, [view[done:]], self._offset + start * self._item + done)
            if n == 0:
                raise OSError(f"{self.path}: truncated (wanted {count} images from image {start})")
            done += n
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    # A worker process of a DataLoader gets its own descriptor.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def load_prepared(folder: str | Path) -> tuple[PreparedImages, pd.DataFrame]:
    """A prepared set: images (N, S, S, 3) uint8, read on demand, and its index table; a
    missing or damaged one (e.g. a worker on a machine without it) is a DatasetError."""
    folder = Path(folder)
    for name in ("index.csv", "images.npy"):
        if not (folder / name).is_file():
            raise _unprepared(
                folder, f"no prepared data ({name if folder.is_dir() else 'folder'} not found)"
            )
    try:
        index = pd.read_csv(folder / "index.csv", dtype={"id": str, "patient": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise _unprepared(folder, f"index.csv is not readable ({e})") from None
    images = PreparedImages(folder / "images.npy")
    if len(images) != len(index):
        raise _unprepared(folder, f"images.npy has {len(images)} images, index.csv {len(index)}")
    return images, index
