"""Synthetic fundus generator: determinism, dataset layouts, image content, difficulty knob."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from retfound_hpo.data.demo.render import CAMERA_A, CAMERA_B, render_fundus
from retfound_hpo.data.demo.synthetic import GRADE_PROBS, grade_counts, write_demo_datasets

SEEDS = range(5)


def render(grade: int, seed: int, camera=CAMERA_A, lesion_scale: float = 1.0) -> np.ndarray:
    return render_fundus(grade, np.random.default_rng(seed), camera, lesion_scale)


def lesion_signal(grade: int, seed: int, camera=CAMERA_A, lesion_scale: float = 1.0) -> float:
    """Mean absolute difference from the grade-0 image of the same seed (same eye)."""
    healthy = render(0, seed, camera).astype(np.int16)
    return float(np.abs(render(grade, seed, camera, lesion_scale) - healthy).mean())


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1500, 1901])
def test_grade_counts_are_exact(n):
    counts = grade_counts(n)
    assert sum(counts) == n and len(counts) == len(GRADE_PROBS)
    quotas = np.asarray(GRADE_PROBS) / sum(GRADE_PROBS) * n
    assert np.all(np.abs(np.asarray(counts) - quotas) < 1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A tiny demo written serially; later tests compare it with a parallel run."""
    out = tmp_path_factory.mktemp("serial") / "demo"
    paths = write_demo_datasets(out, n_domain_a=12, n_domain_b=10, seed=3, workers=1)
    assert paths == {"aptos": out / "aptos", "messidor": out / "messidor"}
    return out


def test_same_seed_gives_identical_bytes_serial_and_parallel(demo, tmp_path):
    parallel = tmp_path / "demo"
    (parallel / "stale").mkdir(parents=True)  # an old data set is replaced, not merged
    write_demo_datasets(parallel, n_domain_a=12, n_domain_b=10, seed=3, workers=2)
    assert tree_bytes(parallel) == tree_bytes(demo)
    assert not (parallel / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no .tmp / .old left


def test_different_seed_gives_different_data(demo, tmp_path):
    write_demo_datasets(tmp_path / "other", n_domain_a=12, n_domain_b=0, seed=4, workers=1)
    ids = {r["id_code"] for r in read_rows(tmp_path / "other" / "aptos" / "train.csv")[1]}
    assert not ids & {r["id_code"] for r in read_rows(demo / "aptos" / "train.csv")[1]}
    assert not np.array_equal(render(2, 0), render(2, 1))


def test_aptos_layout(demo):
    header, rows = read_rows(demo / "aptos" / "train.csv")
    assert header == ["id_code", "diagnosis"]
    assert all(re.fullmatch(r"[0-9a-f]{12}", r["id_code"]) for r in rows)
    assert len({r["id_code"] for r in rows}) == 12
    assert sorted(int(r["diagnosis"]) for r in rows) == sorted(
        g for g, c in enumerate(grade_counts(12)) for _ in range(c)
    )
    images = {p.name for p in (demo / "aptos" / "train_images").iterdir()}
    assert images == {f"{r['id_code']}.png" for r in rows}


def test_messidor_layout_with_ungradable_rows(demo):
    header, rows = read_rows(demo / "messidor" / "messidor_data.csv")
    assert header == [
        "image_id",
        "adjudicated_dr_grade",
        "adjudicated_dme",
        "adjudicated_gradable",
    ]
    assert all(re.fullmatch(r"\d{8}_\d{5}_0100_PP\.jpg", r["image_id"]) for r in rows)
    assert len({r["image_id"] for r in rows}) == len(rows)
    gradable = [r for r in rows if r["adjudicated_gradable"] == "1"]
    ungradable = [r for r in rows if r["adjudicated_gradable"] == "0"]
    assert len(gradable) == 10 and len(ungradable) >= 1
    assert all(r["adjudicated_dr_grade"] == "" for r in ungradable)
    assert sorted(int(r["adjudicated_dr_grade"]) for r in gradable) == sorted(
        g for g, c in enumerate(grade_counts(10)) for _ in range(c)
    )
    assert {r["adjudicated_dme"] for r in gradable} <= {"0", "1"}
    images = demo / "messidor" / "IMAGES"
    assert {p.name for p in images.iterdir()} == {r["image_id"] for r in rows}
    assert (images / rows[0]["image_id"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG


@pytest.mark.parametrize("camera", [CAMERA_A, CAMERA_B], ids=["A", "B"])
def test_black_border_and_bright_field_of_view(camera):
    for seed in SEEDS:
        img = render(seed % 5, seed, camera)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        for corner in (img[:4, :4], img[:4, -4:], img[-4:, :4], img[-4:, -4:]):
            assert corner.max() == 0
        h, w = img.shape[:2]
        centre = img[2 * h // 5 : 3 * h // 5, 2 * w // 5 : 3 * w // 5]
        assert centre.max(axis=2).min() > 12  # nowhere mistaken for border


def test_camera_domains_differ():
    def stats(camera):
        imgs = [render(0, seed, camera) for seed in SEEDS]
        inside = [im[im.max(axis=2) > 20].astype(float) for im in imgs]
        red_green = np.mean([px[:, 0].mean() / px[:, 1].mean() for px in inside])
        return red_green, np.mean([im.shape[1] / im.shape[0] for im in imgs]), imgs

    rg_a, aspect_a, imgs_a = stats(CAMERA_A)
    rg_b, aspect_b, imgs_b = stats(CAMERA_B)
    assert rg_b < rg_a - 0.2  # Messidor-like is yellower: less red per unit green
    assert aspect_a > 1.25 > 1.2 > aspect_b
    assert np.mean([im.shape[1] for im in imgs_a]) > np.mean([im.shape[1] for im in imgs_b])


def test_lesions_grow_with_grade():
    for camera in (CAMERA_A, CAMERA_B):
        signal = np.mean([[lesion_signal(g, s, camera) for g in range(5)] for s in SEEDS], 0)
        assert signal[0] == 0  # same seed, grade 0: same eye, same camera
        assert np.all(np.diff(signal) > 0), signal


def test_right_and_left_eyes_are_mirrored():
    sides = set()
    for seed in range(12):
        green = render(0, seed)[..., 1].astype(float)
        col = np.unravel_index(np.argmax(green), green.shape)[1]  # the disc is brightest
        sides.add(col > green.shape[1] / 2)
    assert sides == {False, True}


def test_lesion_scale_makes_grade_1_subtler():
    for seed in SEEDS:
        assert 0 < lesion_signal(1, seed, lesion_scale=0.5) < lesion_signal(1, seed)


def test_invalid_grade_is_rejected():
    with pytest.raises(ValueError, match="grade"):
        render(5, 0)


def test_messidor_exams_of_two_eyes_with_their_exam_list(demo):
    """Camera B is exams of two eyes, listed as Messidor-2's messidor-2.csv lists them."""
    from retfound_hpo.data.formats import read_dataset

    rows = read_rows(demo / "messidor" / "messidor_data.csv")[1]
    lines = (demo / "messidor" / "messidor-2.csv").read_text().splitlines()
    assert lines[0] == "left;right" and len(lines) - 1 == len(rows) // 2
    listed = [name for line in lines[1:] for name in line.split(";")]
    assert sorted(listed) == sorted(r["image_id"] for r in rows)  # every image, once
    table = read_dataset(
        "messidor",
        demo / "messidor" / "messidor_data.csv",
        demo / "messidor" / "IMAGES",
        exams=str(demo / "messidor" / "messidor-2.csv"),
    )
    assert table["exam"].value_counts().max() == 2 and table["exam"].nunique() >= len(rows) // 2 - 2
