"""Crop, resize and cache; image modes, huge and rotated images, unreadable images and images
without a retina, all-or-nothing caches, missing or damaged prepared sets."""

import logging
import pickle
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import retfound_hpo.data.preprocess as preprocess
from conftest import fundus_like
from retfound_hpo.core.errors import DatasetError
from retfound_hpo.data.prepared import PreparedImages, load_prepared
from retfound_hpo.data.preprocess import (
    NoRetinaError,
    crop_to_disc,
    load_image,
    prepare_images,
    preprocess_image,
)


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
    # A bilevel (1-bit) image decodes too, but is pure white inside: no photograph.
    Image.fromarray(disc).convert("1").save(tmp_path / "bilevel.png")
    with pytest.raises(NoRetinaError, match="% of the field is pure white"):
        preprocess_image(tmp_path / "bilevel.png", 32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_5000_px_image_is_shrunk_before_the_crop(tmp_path, fmt):
    img = Image.new("RGB", (5000, 3400))
    img.paste((150, 70, 30), (800, 0, 4200, 3400))  # a bright 3400 px "disc"
    for x in range(900, 4200, 300):  # with "vessels": a flat frame is no photograph
        img.paste((60, 20, 10), (x, 0, x + 40, 3400))
    path = tmp_path / f"huge.{fmt.lower()}"
    img.save(path, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    loaded = load_image(path, min_side=2 * 64)
    # JPEG: decoded at 1/8 scale; PNG: box-reduced right after decoding; both keep >= 128 px.
    assert 128 <= min(loaded.size) < 256 and max(loaded.size) < 400
    out = preprocess_image(path, 64)
    assert out.shape == (64, 64, 3) and out[32, 32, 0] > 100


def marked_fundus(height=96, width=128):
    """A smooth disc on a black border, wider than tall, with a white marker at its upper left."""
    yy, xx = np.mgrid[:height, :width]
    img = np.zeros((height, width, 3), np.uint8)
    img[(yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (height / 2 - 1) ** 2] = (150, 70, 30)
    img[height // 4 : height // 4 + height // 6, width // 3 : width // 3 + height // 6] = 255
    return Image.fromarray(img)


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (3, Image.Transpose.ROTATE_180),
    ],
)
def test_exif_orientation_is_applied_before_the_crop(tmp_path, orientation, stored):
    # A phone stores the pixels as the sensor saw them and the turn in EXIF Orientation.
    marked_fundus().save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    marked_fundus().transpose(stored).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    upright = preprocess_image(tmp_path / "upright.jpg", 32)
    phone = preprocess_image(tmp_path / "phone.jpg", 32)
    assert np.abs(phone.astype(int) - upright).mean() < 2
    marker = np.argwhere(phone.min(axis=2) > 200).mean(axis=0)  # (row, col) of the white marker
    assert marker[0] < 14 and marker[1] < 14  # upper left, where it is on the upright image
    # The JPEG draft fast path still decodes a large photograph at a fraction of its size.
    big = marked_fundus(1200, 1600).transpose(stored)
    big.save(tmp_path / "big.jpg", quality=90, exif=exif)
    loaded = load_image(tmp_path / "big.jpg", min_side=64)
    assert loaded.width > loaded.height and max(loaded.size) <= 200  # upright, 1/8 scale or less


def dark_files(folder):
    """Images without a visible retina: all black, severely under-exposed, a lone bright spot."""
    black = np.zeros((64, 80, 3), np.uint8)
    spot = black.copy()
    spot[30:34, 40:44] = 200  # only the optic disc shows
    files = {
        "black.png": black,
        "dim.png": (fundus_like(np.random.default_rng(4)) * 0.05).astype(np.uint8),  # max 10
        "spot.png": spot,
    }
    for name, img in files.items():
        Image.fromarray(img).save(folder / name)
    return [folder / name for name in files]


def test_no_retina_is_an_ordinary_error(tmp_path):
    for path in dark_files(tmp_path):
        with pytest.raises(
            NoRetinaError, match=r"^no retina found: only 0.\d % of the image is"
        ) as info:
            preprocess_image(path, 32)
        assert isinstance(info.value, ValueError)  # predict reports it like an unreadable file
    assert "expected at least 5 %" in str(info.value)


@pytest.mark.parametrize(("radius", "found"), [(14, True), (11, False)])  # 6.2 % and 3.8 %
def test_a_small_field_of_view_still_counts(tmp_path, radius, found):
    yy, xx = np.mgrid[:100, :100]
    img = np.zeros((100, 100, 3), np.uint8)
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 < radius**2
    img[disc] = np.random.default_rng(0).integers(120, 200, (int(disc.sum()), 3))
    Image.fromarray(img).save(tmp_path / "small.png")
    if found:
        assert preprocess_image(tmp_path / "small.png", 32)[16, 16, 0] > 100
    else:
        with pytest.raises(NoRetinaError):
            preprocess_image(tmp_path / "small.png", 32)


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
    assert message.startswith("train.csv: 7 unusable image(s) of 10: row 3 ")
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


def test_no_retina_stops_like_an_unreadable_image(tmp_path, caplog):
    good = write_images(tmp_path, 3)
    dark = dark_files(tmp_path)
    table = table_of(
        [good[0], dark[0], good[1], dark[1], good[2]], pd.Index(range(2, 7), name="row")
    )
    with pytest.raises(DatasetError) as info:
        prepare_images(table, tmp_path / "prepared", size=32, workers=1, source="train.csv")
    assert str(info.value).startswith(
        f"train.csv: 2 unusable image(s) of 5: row 3 {dark[0]} (no retina found: only 0.0 % of the "
        "image is brighter than the black border, expected at least 5 %); row 5 "
    )
    assert_no_cache(tmp_path / "prepared")
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.data.preprocess"):
        out = prepare_images(table, tmp_path / "prepared", size=32, workers=2, skip_bad_rows=True)
    assert load_prepared(out)[1]["path"].tolist() == [str(p) for p in good]
    assert [r.getMessage().count("no retina found") for r in caplog.records] == [1, 1]


def test_nothing_readable_is_an_error_even_when_skipping(tmp_path):
    table = table_of(corrupt_files(tmp_path))
    with pytest.raises(DatasetError, match="none of the 4 images is usable"):
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


def test_prepared_images_read_like_the_array(tmp_path):
    from retfound_hpo.data.prepared import PreparedImages

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


def damaged_sets(root):
    """Prepared folders as a worker on another machine may find them: (folder, message)."""
    good = root / "good"
    prepare_images(table_of(write_images(root, 3)), good, size=8, workers=1)
    cases = {name: root / name for name in ("no_index", "no_npy", "count", "garbage", "floats")}
    cases |= {"truncated": root / "truncated", "empty_index": root / "empty_index"}
    for folder in cases.values():
        shutil.copytree(good, folder)
    (cases["no_index"] / "index.csv").unlink()
    (cases["no_npy"] / "images.npy").unlink()
    np.save(cases["count"] / "images.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (cases["garbage"] / "images.npy").write_bytes(b"<html>404</html>")
    np.save(cases["floats"] / "images.npy", np.zeros((3, 8, 8, 3), np.float32))
    npy = (cases["truncated"] / "images.npy").read_bytes()
    (cases["truncated"] / "images.npy").write_bytes(npy[: len(npy) - 100])  # an interrupted copy
    (cases["empty_index"] / "index.csv").write_text("")
    return [
        (root / "missing", r"missing: no prepared data \(folder not found\)"),
        (cases["no_index"], r"no_index: no prepared data \(index.csv not found\)"),
        (cases["no_npy"], r"no_npy: no prepared data \(images.npy not found\)"),
        (cases["count"], r"count: images.npy has 2 images, index.csv 3"),
        (cases["garbage"], r"garbage: images.npy is not a .npy file \(the magic string"),
        (cases["floats"], r"floats: images.npy holds \(3, 8, 8, 3\) float32, not \(N, S, S, 3\)"),
        (cases["truncated"], r"truncated: images.npy is truncated \(fewer than 3 images\)"),
        (cases["empty_index"], r"empty_index: index.csv is not readable"),
    ]


def test_missing_or_damaged_prepared_data_says_what_to_do(tmp_path):
    for folder, message in damaged_sets(tmp_path):
        with pytest.raises(DatasetError, match=message) as info:
            load_prepared(folder)
        hint = (
            f"; run `dvc repro prepare-split` here, or copy {tmp_path}/ from the machine that ran"
        )
        assert str(info.value).endswith(hint + " it"), folder.name
    with pytest.raises(DatasetError, match="not a .npy file"):
        PreparedImages(tmp_path / "garbage" / "images.npy")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: Image.new("RGB", (1, 1), (120, 60, 30)), "1x1 px, too small"),
        (lambda: Image.new("RGB", (4000, 10), (120, 60, 30)), "an aspect ratio of 400.0:1"),
        (lambda: Image.new("RGB", (300, 300), (255, 255, 255)), "100 % of the field is pure white"),
        (lambda: Image.new("RGB", (300, 300), (128, 60, 30)), "a uniform frame"),
        (
            lambda: Image.fromarray(
                np.kron(  # 20 px patches, 80 % of them white
                    np.where(np.random.default_rng(0).random((15, 15, 1)) < 0.2, 200, 255),
                    np.ones((20, 20, 3)),
                ).astype(np.uint8)
            ),
            "of the field is pure white",
        ),
    ],
)
def test_what_cannot_be_a_fundus_photograph_is_refused_with_its_reason(tmp_path, make, reason):
    """1x1, a 4000x10 strip, an all-white square, a mostly white frame: refused, not graded."""
    path = tmp_path / "odd.png"
    make().save(path)
    with pytest.raises(NoRetinaError, match=re.escape(reason)):
        preprocess_image(path, 64)


def test_real_looking_photographs_pass_the_checks(tmp_path):
    """The demo's photographs of both cameras, at their sizes, are accepted."""
    from retfound_hpo.data.demo.render import CAMERA_A, CAMERA_B, render_fundus

    for i, camera in enumerate((CAMERA_A, CAMERA_B)):
        pixels = render_fundus(4, np.random.default_rng(i), camera, lesion_scale=2.0)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        assert preprocess_image(tmp_path / f"{i}.png", 96).shape == (96, 96, 3)
