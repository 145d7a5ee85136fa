"""Duplicate photographs: the perceptual hash, pairs, groups, and split units."""

import io
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.data.demo.render import CAMERA_A, render_fundus
from retfound_hpo.data.duplicates import (
    HASH_BITS,
    close_pairs,
    drop_conflicting,
    duplicate_groups,
    find_duplicates,
    hash_images,
)
from retfound_hpo.data.preprocess import preprocess_image
from retfound_hpo.data.units import resampling_units

MAX_DISTANCE = 60  # data.duplicate_distance's default


def eye(index: int, grade: int = 0) -> np.ndarray:
    """A distinct synthetic camera-A photograph at its native ~500 px."""
    return render_fundus(grade, np.random.default_rng([7, index]), CAMERA_A, lesion_scale=2.0)


def copy_of(image: np.ndarray, scale: float = 1.0, quality: int | None = None) -> np.ndarray:
    """`image` resized by `scale` and (with `quality`) round-tripped through JPEG."""
    pil = Image.fromarray(image)
    if scale != 1.0:
        size = (round(pil.width * scale), round(pil.height * scale))
        pil = pil.resize(size, Image.Resampling.LANCZOS)
    if quality is not None:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        pil = Image.open(buffer)
    return np.asarray(pil.convert("RGB"))


def prepared(images: list[np.ndarray], tmp_path, size: int = 96) -> np.ndarray:
    """The images as prepare-split caches them: (N, size, size, 3)."""
    out = []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        out.append(preprocess_image(path, size))
    return np.stack(out)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances between packed hashes: (len(a), len(b))."""
    return np.unpackbits(a[:, None] ^ b[None, :], axis=2).sum(-1)


def test_copies_are_close_and_other_eyes_are_far(tmp_path):
    originals = [eye(i) for i in range(6)]
    copies = [
        copy_of(originals[0], scale=0.5),
        copy_of(originals[1], scale=1.5),
        copy_of(originals[2], quality=70),
        copy_of(originals[3], scale=0.6, quality=75),
        originals[4].copy(),  # an exact duplicate
    ]
    hashes = hash_images(prepared(originals + copies, tmp_path))
    assert hashes.shape == (11, HASH_BITS // 8)
    d = distances(hashes, hashes)  # (11, 11)
    for k in range(len(copies)):
        assert d[k, 6 + k] <= MAX_DISTANCE
    assert d[4, 10] == 0
    others = d[:6, :6][~np.eye(6, dtype=bool)]
    assert others.min() > MAX_DISTANCE + 10
    assert (d[5, 6:] > MAX_DISTANCE).all()  # eye 5 has no copy


@pytest.mark.parametrize("chunk", [3, 2048])
def test_close_pairs_match_brute_force(chunk):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    # Copies of the base hashes with a few bits flipped, plus unrelated hashes.
    noisy = base ^ np.packbits(rng.random((5, 256)) < 0.1, axis=1)
    a = np.concatenate([base, noisy, rng.integers(0, 256, (7, 32), dtype=np.uint8)])
    d = distances(a, a)
    within = close_pairs(a, None, 60, chunk=chunk)
    expected = [
        (i, j, d[i, j]) for i in range(len(a)) for j in range(i + 1, len(a)) if d[i, j] <= 60
    ]
    assert sorted(map(tuple, within.tolist())) == expected
    between = close_pairs(a[:8], a[5:], 60, chunk=chunk)
    d = distances(a[:8], a[5:])
    expected = [(i, j, d[i, j]) for i in range(8) for j in range(len(a) - 5) if d[i, j] <= 60]
    assert sorted(map(tuple, between.tolist())) == expected


def hashes_with_groups(groups: list[list[int]], n: int) -> np.ndarray:
    """n unrelated random hashes, where each group's members are near copies of its first."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    for group in groups:
        for member in group[1:]:
            hashes[member] = hashes[group[0]] ^ np.packbits(rng.random(256) < 0.05)
    return hashes


def table_of(grades: list[int], patients: list[str] | None = None) -> pd.DataFrame:
    n = len(grades)
    index = pd.RangeIndex(2, n + 2, name="row")  # read_dataset's labels-file lines
    return pd.DataFrame(
        {
            "id": [f"img{i}" for i in range(n)],
            "grade": grades,
            "patient": patients or [f"p{i}" for i in range(n)],
            "path": "",
        },
        index=index,
    )


def test_groups_are_reported_with_rows_grades_and_conflicts():
    table = table_of([0, 1, 2, 2, 3, 4, 0, 2])
    hashes = hashes_with_groups([[1, 6], [2, 3, 7]], len(table))
    records = find_duplicates(table, hashes, MAX_DISTANCE)
    assert [(r["ids"], r["grades"], r["rows"], r["conflicting"]) for r in records] == [
        (["img1", "img6"], [1, 0], [3, 8], True),
        (["img2", "img3", "img7"], [2, 2, 2], [4, 5, 9], False),
    ]
    assert all(0 < r["max_link_distance"] <= MAX_DISTANCE for r in records)


def test_chains_of_close_hashes_form_one_group():
    a = np.zeros((1, 32), np.uint8)
    step = np.packbits(np.arange(256) < 40)[None]  # 40 bits set
    further = np.packbits(np.arange(256) < 80)[None]  # 80: too far from a, 40 from `step`
    table = table_of([0, 0, 0])
    records = find_duplicates(table, np.concatenate([a, step, further]), MAX_DISTANCE)
    assert [r["ids"] for r in records] == [["img0", "img1", "img2"]]


def test_drop_conflicting_drops_only_conflicting_groups():
    table = table_of([0, 1, 2, 2, 3, 4, 0, 2])
    records = find_duplicates(table, hashes_with_groups([[1, 6], [2, 3, 7]], 8), MAX_DISTANCE)
    kept = drop_conflicting(table, records)
    assert kept["id"].tolist() == ["img0", "img2", "img3", "img4", "img5", "img7"]
    assert [r["dropped"] for r in records] == [True, False]


def test_units_merge_patients_that_share_duplicates():
    # Patients a..e; a duplicate links a with c, another c with d: a, c, d become one unit.
    patients = ["a", "a", "b", "c", "c", "d", "e"]
    table = table_of([0, 1, 2, 3, 0, 1, 4], patients)
    records = [
        {"rows": [2, 5], "dropped": False},  # img0 (a) ~ img3 (c)
        {"rows": [6, 7], "dropped": False},  # img4 (c) ~ img5 (d)
        {"rows": [4, 8], "dropped": True},  # b ~ e, but dropped: no link
    ]
    groups = duplicate_groups(table, records)
    assert groups.tolist() == ["dup0", "", "", "dup0", "dup1", "dup1", ""]
    units = resampling_units(table.assign(duplicate_group=groups))
    assert units.index.equals(table.index)
    assert units.tolist() == ["a", "a", "b", "a", "a", "a", "e"]
    assert (resampling_units(table) == table["patient"]).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("duplicate_distance", 129, "data.duplicate_distance: 129 is not allowed; must be 0-128"),
        ("duplicate_distance", -1, "data.duplicate_distance: -1 is not allowed; must be 0-128"),
        ("duplicates", "drop", "data.duplicates: 'drop' is not allowed; choose one of ['keep',"),
    ],
)
def test_duplicate_params_are_checked(tmp_path, key, value, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {key: value}}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(tmp_path / "params.yaml")
