"""Crop, resize and cache; image modes, huge images, unreadable images, all-or-nothing caches."""

import logging
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import retfound_hpo.data.preprocess as preprocess
from conftest import fundus_like
from retfound_hpo.config import load_params
from retfound_hpo.data.prepare import prepare_split
from retfound_hpo.data.preprocess import (
    crop_to_disc,
    load_image,
    load_prepared,
    prepare_images,
    preprocess_image,
)
from retfound_hpo.errors import DatasetError


def test_crop_removes_black_border_and_squares():
    img = Image.fromarray(fundus_like(np.random.default_rng(0), size=64, border=20))  # 64 x 104
    out = crop_to_disc(img)
    assert out.size[0] == out.size[1]
    assert 58 <= out.size[0] <= 64  # the disc's diameter


def test_clipped_disc_is_padded_not_stretched():
    full = fundus_like(np.random.default_rng(0), size=80, border=0)
    clipped = Image.fromarray(full[10:70])  # top and bottom of the disc cut off: 60 x 80
    out = crop_to_disc(clipped)
    assert out.size[0] == out.size[1] >= 76  # disc width, not 60
    assert np.asarray(out)[:5].max() == 0  # padding rows are black


def table_of(paths, index=None):
    n = len(paths)
    ids = [f"img{i}" for i in range(n)]
    table = pd.DataFrame(
        {"id": ids, "path": [str(p) for p in paths], "grade": [i % 5 for i in range(n)],
         "patient": ids},
        index=index,
    )  # fmt: skip
    return table


def write_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    paths = [folder / f"{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(fundus_like(rng)).save(path)
    return paths


def test_prepare_images_writes_whole_cache(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA", "P"]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(fundus_like(rng)).convert(mode).save(path)
        paths.append(str(path))
    table = pd.DataFrame(
        {"id": list("abcd"), "path": paths, "grade": [0, 1, 2, 3], "patient": list("abcd")}
    )
    out = prepare_images(table, tmp_path / "prepared", size=32, workers=1)
    images, index = load_prepared(out)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert index["grade"].tolist() == [0, 1, 2, 3]
    assert not (tmp_path / "prepared.tmp").exists()
    again = prepare_images(table, tmp_path / "prepared", size=32, workers=2)  # parallel == serial
    assert np.array_equal(load_prepared(again)[0], images)


def test_unusual_modes_become_8_bit_rgb(tmp_path):
    disc = fundus_like(np.random.default_rng(1))  # (64, 80, 3) uint8, black border
    gray16 = disc[..., 0].astype(np.uint16) * 16  # a 12-bit camera in a 16-bit file
    files = {
        "gray16.png": Image.fromarray(gray16),
        "la.png": Image.fromarray(disc).convert("LA"),
        "bilevel.png": Image.fromarray(disc).convert("1"),
        "palette_alpha.png": Image.fromarray(disc).convert("P"),  # saved with transparency
        "cmyk.jpg": Image.fromarray(disc).convert("CMYK"),
        "float.tif": Image.fromarray(disc[..., 1].astype(np.float32)),
    }
    for name, img in files.items():
        img.save(tmp_path / name, **({"transparency": 0} if img.mode == "P" else {}))
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    for name in files:
        out = preprocess_image(tmp_path / name, 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
        assert out[12:20, 12:20].mean() > 40, name  # the disc survives, scaled to 8 bits
        assert out[0, 0].max() <= 12, name  # the corner outside the disc stays black


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_5000_px_image_is_shrunk_before_the_crop(tmp_path, fmt):
    img = Image.new("RGB", (5000, 3400))
    img.paste((150, 70, 30), (800, 0, 4200, 3400))  # a bright 3400 px "disc"
    path = tmp_path / f"huge.{fmt.lower()}"
    img.save(path, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    loaded = load_image(path, min_side=2 * 64)
    # JPEG: decoded at 1/8 scale; PNG: box-reduced right after decoding; both keep >= 128 px.
    assert 128 <= min(loaded.size) < 256 and max(loaded.size) < 400
    out = preprocess_image(path, 64)
    assert out.shape == (64, 64, 3) and out[32, 32, 0] > 100


def corrupt_files(folder):
    """Unreadable images as they turn up in downloads: garbage, empty, truncated PNG and JPEG."""
    img = Image.fromarray(fundus_like(np.random.default_rng(2)))
    img.save(folder / "full.png")
    img.save(folder / "full.jpg", quality=90)
    files = {
        "garbage.png": b"<html>404 Not Found</html>",
        "empty.png": b"",
        "cut.png": (folder / "full.png").read_bytes()[:400],
        "cut.jpg": (folder / "full.jpg").read_bytes()[:600],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def assert_no_cache(prepared_dir):
    assert not list(prepared_dir.parent.glob(prepared_dir.name + "*.tmp"))
    assert not list(prepared_dir.parent.rglob("images.npy"))
    assert not list(prepared_dir.parent.rglob("index.csv"))


def test_unreadable_images_stop_with_rows_and_count(tmp_path):
    good = write_images(tmp_path, 3)
    bad = corrupt_files(tmp_path)
    paths = [good[0], *bad, bad[0], bad[1], good[1], bad[2], good[2]]  # 7 of 10 unreadable
    table = table_of(paths, index=pd.Index(range(2, 12), name="row"))  # as read_dataset makes it
    prepare_images(table_of(good), tmp_path / "prepared", size=32, workers=1)  # an older cache
    with pytest.raises(DatasetError) as info:
        prepare_images(table, tmp_path / "prepared", size=32, workers=2, source="train.csv")
    message = str(info.value)
    assert message.startswith("train.csv: 7 unreadable image(s) of 10: row 3 ")
    assert "garbage.png (UnidentifiedImageError" in message
    assert "cut.png (OSError: image file is truncated)" in message
    assert "cut.jpg (OSError" in message and "row 6 " in message
    assert "... and 2 more" in message and "skip_bad_rows" in message
    assert_no_cache(tmp_path / "prepared")  # neither a half-written nor the stale cache remains


def test_skip_bad_rows_leaves_unreadable_images_out(tmp_path, caplog):
    good = write_images(tmp_path, 4)
    bad = corrupt_files(tmp_path)
    paths = [bad[0], good[0], good[1], bad[2], good[2], bad[3], good[3]]
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.data.preprocess"):
        out = prepare_images(
            table_of(paths), tmp_path / "prepared", size=32, workers=2, skip_bad_rows=True
        )
    images, index = load_prepared(out)
    assert index["path"].tolist() == [str(p) for p in good]
    assert len(caplog.records) == 3 and "skipped" in caplog.records[0].getMessage()
    alone = prepare_images(table_of(good), tmp_path / "alone", size=32, workers=1)
    assert np.array_equal(images, load_prepared(alone)[0])
    assert not list(tmp_path.glob("*.tmp")) and not list(out.glob("*.part.npy"))


def test_nothing_readable_is_an_error_even_when_skipping(tmp_path):
    table = table_of(corrupt_files(tmp_path))
    with pytest.raises(DatasetError, match="none of the 4 images is readable"):
        prepare_images(table, tmp_path / "prepared", size=32, workers=1, skip_bad_rows=True)
    assert_no_cache(tmp_path / "prepared")


def test_interrupted_preparation_leaves_nothing(tmp_path, monkeypatch):
    paths = write_images(tmp_path, 4)
    prepare_images(table_of(paths), tmp_path / "prepared", size=32, workers=1)
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(preprocess, "preprocess_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(table_of(paths), tmp_path / "prepared", size=32, workers=1)
    assert_no_cache(tmp_path / "prepared")


# The prepare-split stage end to end, on an APTOS-layout folder with one kind of damage each.
def aptos_folder(root, n=40):
    (root / "train_images").mkdir(parents=True)
    rows = [(f"{i:012x}", i % 5) for i in range(n)]
    for i, (name, _) in enumerate(rows):
        img = fundus_like(np.random.default_rng(i), size=24, border=4)
        Image.fromarray(img).save(root / "train_images" / f"{name}.png")
    return rows


def stage_params(tmp_path, **data):
    raw = {
        "data": {
            "csv": str(tmp_path / "aptos" / "train.csv"),
            "images": str(tmp_path / "aptos" / "train_images"),
            "prepared_dir": str(tmp_path / "prepared"),
            "splits_dir": str(tmp_path / "splits"),
            "demo": {"enabled": False, "out_dir": str(tmp_path / "demo")},
            **data,
        },
        "model": {"input_size": 32},
        "hpo": {"search_space": {"lora_r": {"type": "categorical", "choices": [4]}}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def damage(kind, root, rows):
    images = root / "train_images"
    if kind == "grade":
        rows[5] = (rows[5][0], "5")
    elif kind == "duplicate":
        rows[7] = (rows[3][0], rows[7][1])
    elif kind == "missing":
        (images / f"{rows[4][0]}.png").unlink()
    elif kind == "unreadable":
        (images / f"{rows[9][0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif kind == "rare":
        rows[:] = [(i, 3 if g == 4 else g) for i, g in rows]
        rows[0] = (rows[0][0], 4)
    header = "id_code,grade" if kind == "column" else "id_code,diagnosis"
    body = "" if kind == "empty" else "".join(f"{i},{g}\n" for i, g in rows)
    (root / "train.csv").write_text(header + "\n" + body)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("grade", r"train.csv: row 7 \(diagnosis='5'\): grade must be an integer 0-4; 1 bad"),
        ("duplicate", r"train.csv: row 9: duplicate id '000000000003'; 1 duplicate"),
        ("missing", r"train.csv: row 6: image .*000000000004.png not found; 1 missing"),
        ("column", r"train.csv: missing column\(s\) \['diagnosis'\]"),
        ("empty", r"train.csv: no rows"),
        ("rare", r"train.csv: grade 4 has 1 patient"),
        ("unreadable", r"train.csv: 1 unreadable image\(s\) of \d+: row 11 .*000000000009.png"),
    ],
)
def test_bad_input_stops_the_stage_before_any_cache(tmp_path, kind, message):
    rows = aptos_folder(tmp_path / "aptos")
    damage(kind, tmp_path / "aptos", rows)
    with pytest.raises(DatasetError, match=message):
        prepare_split(stage_params(tmp_path))
    assert_no_cache(tmp_path / "prepared" / "train")
    assert not list((tmp_path / "splits").glob("*.csv"))


def test_stage_skips_bad_rows_when_asked(tmp_path, caplog):
    rows = aptos_folder(tmp_path / "aptos", n=45)
    rows[5] = (rows[5][0], "x")
    (tmp_path / "aptos" / "train_images" / f"{rows[9][0]}.png").write_bytes(b"garbage")
    damage("none", tmp_path / "aptos", rows)
    with caplog.at_level(logging.WARNING):
        summary = prepare_split(stage_params(tmp_path, skip_bad_rows=True))
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 43
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 2
    for name in ("train", "val", "test"):
        split = pd.read_csv(tmp_path / "splits" / f"{name}.csv", dtype={"id": str})
        _, index = load_prepared(tmp_path / "prepared" / name)
        assert split["id"].tolist() == index["id"].tolist()


def test_prepared_images_read_like_the_array(tmp_path):
    from retfound_hpo.data.preprocess import PreparedImages

    array = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    images = PreparedImages(tmp_path / "images.npy")
    assert len(images) == 7 and images.shape == array.shape
    assert np.array_equal(images[3], array[3]) and np.array_equal(images[-1], array[-1])
    assert np.array_equal(images[2:5], array[2:5]) and np.array_equal(images[::3], array[::3])
    assert np.array_equal(np.asarray(images), array) and images[5:2].shape == (0, 4, 4, 3)
    with pytest.raises(IndexError):
        images[7]
    clone = pickle.loads(pickle.dumps(images))  # as a DataLoader worker gets it
    assert np.array_equal(clone[6], array[6])
