"""Synthetic fundus photographs with DR grades 0-4: the embedded demo data set.

Anatomy (FOV, optic disc and cup, macula, arteries and veins) and DR lesions are drawn with
sizes relative to the FOV diameter D. At `lesion_scale=1` a microaneurysm is ~0.025 D across,
i.e. ~2.4 px once the retina is cropped and resized to 96 px (real ones are ~1 px there).
Calibration on 2 CPU cores (lr 3e-3): LoRA on the 96 px demo ViT learned nothing in 6 epochs at 1.0,
started at epoch 5 at 1.5 and at epoch 3 at 2.0 (val kappa 0.86), so the demo uses 2.0.
Smaller `lesion_scale` shrinks lesions and lowers their contrast (harder, more realistic).
Two cameras mimic APTOS-2019 and Messidor-2; camera B's images are exams of two eyes, listed
in `messidor-2.csv` as Messidor-2 ships them (left;right), fellow eyes of similar grades.

Every image comes from its own generator, `default_rng([seed, domain, index])`, so serial and
parallel runs write identical bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from retfound_hpo.core.system import usable_cpus
from retfound_hpo.data.demo.render import CAMERA_A, CAMERA_B, render_eye

log = logging.getLogger(__name__)

GRADE_PROBS: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)  # APTOS-2019 (sums to 0.99)
UNGRADABLE_FRACTION = 0.02  # extra Messidor rows marked ungradable
EXAM_LIST = "messidor-2.csv"  # Messidor-2's exam list: two images an exam, left;right
FELLOW_SPREAD = 2.0  # fellow eyes are paired by grade + U(0, spread): similar, not equal


def grade_counts(n: int, probs=GRADE_PROBS) -> list[int]:
    """Exact per-grade counts summing to n: floor of the quotas, then largest remainders."""
    quotas = np.asarray(probs, dtype=float) / np.sum(probs) * n
    counts = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def pair_fellow_eyes(grades: list[int | None], rng: np.random.Generator) -> list[int | None]:
    """The grades reordered so that images 2e and 2e + 1 are the two eyes of exam e: sorted by
    grade plus noise and paired with their neighbour (fellow eyes have similar grades, as in
    DR), exams in random order; an ungradable image pairs with any. len(grades) must be even."""
    keys = [rng.uniform(0, 5) if g is None else g + rng.uniform(0, FELLOW_SPREAD) for g in grades]
    order = np.argsort(keys, kind="stable").reshape(-1, 2)
    order = order[rng.permutation(len(order))]
    return [grades[i] for i in order.ravel()]


def _make_image(job: tuple) -> tuple:
    """Render and save one image, return its CSV row. Runs in worker processes."""
    domain, index, grade, seed, scale, image_dir = job
    rng = np.random.default_rng([seed, domain, index])
    if domain == 0:
        name = rng.bytes(6).hex()  # APTOS ids are 12 hex digits
        img, _ = render_eye(grade, rng, CAMERA_A, scale)
        # Sensor noise makes PNG barely compressible: zlib's fast RLE mode is as small.
        Image.fromarray(img).save(image_dir / f"{name}.png", compress_level=1, compress_type=3)
        return (name, grade)
    # Messidor names: exam date, a unique running number, camera/eye code.
    date = dt.date(2005, 1, 10) + dt.timedelta(days=index // 24)
    name = f"{date:%Y%m%d}_{10000 + 7 * index + int(rng.integers(7)):05d}_0100_PP.jpg"
    shown = grade if grade is not None else int(rng.integers(5))  # what lies under the blur
    img, dme = render_eye(shown, rng, CAMERA_B, scale)
    if grade is None:  # ungradable: defocused and badly exposed
        pil = Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(5, 10)))
        img = np.clip(np.asarray(pil) * rng.choice([0.35, 1.8]), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(image_dir / name, quality=CAMERA_B.jpeg_quality)
    if grade is None:
        return (name, "", "", 0)
    return (name, grade, int(dme and grade >= 2 and rng.random() < 0.9), 1)


def _run(jobs: list[tuple], workers: int) -> list[tuple]:
    """Rows of `jobs` in order; workers=1 renders in this process."""
    rows = []
    with tqdm(total=len(jobs), desc="synthetic fundus", unit="img", disable=None) as bar:
        if workers <= 1:
            for job in jobs:
                rows.append(_make_image(job))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for row in pool.map(_make_image, jobs, chunksize=8):
                    rows.append(row)
                    bar.update()
    return rows


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_demo_datasets(
    out_dir: Path,
    n_domain_a: int,
    n_domain_b: int,
    seed: int,
    lesion_scale: float = 1.0,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write domain A in APTOS-2019 layout and domain B in Messidor-2 layout (exams of two eyes
    and their exam list); return {"aptos": dir, "messidor": dir}. Messidor gets ~2 % extra rows
    marked ungradable (more by one where that makes the exams whole).

    Built in a sibling ".tmp" folder and swapped in at the end, so an interrupted run never
    leaves a complete-looking half data set. Output depends only on the arguments other than
    `workers` (default: all usable CPUs)."""
    out_dir = Path(out_dir)
    if workers is None:
        workers = usable_cpus()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    aptos, messidor = tmp / "aptos", tmp / "messidor"
    (aptos / "train_images").mkdir(parents=True)
    (messidor / "IMAGES").mkdir(parents=True)

    def shuffled_grades(domain: int, n: int, n_ungradable: int = 0) -> list[int | None]:
        g = [k for k, c in enumerate(grade_counts(n)) for _ in range(c)] + [None] * n_ungradable
        order = np.random.default_rng([seed, 1000 + domain]).permutation(len(g))
        return [g[i] for i in order]

    n_bad = max(round(UNGRADABLE_FRACTION * n_domain_b), int(n_domain_b > 0))
    n_bad += (n_domain_b + n_bad) % 2  # whole exams of two eyes
    grades_b = pair_fellow_eyes(
        shuffled_grades(1, n_domain_b, n_bad), np.random.default_rng([seed, 2001])
    )
    jobs = [
        (0, i, g, seed, lesion_scale, aptos / "train_images")
        for i, g in enumerate(shuffled_grades(0, n_domain_a))
    ]
    jobs += [(1, i, g, seed, lesion_scale, messidor / "IMAGES") for i, g in enumerate(grades_b)]
    rows = _run(jobs, workers)
    rows_a, rows_b = rows[:n_domain_a], rows[n_domain_a:]
    if len({r[0] for r in rows_a}) != len(rows_a):  # 48-bit ids: practically never
        raise RuntimeError(f"seed {seed} gives a duplicate APTOS id; choose another seed")
    _write_csv(aptos / "train.csv", ["id_code", "diagnosis"], rows_a)
    _write_csv(
        messidor / "messidor_data.csv",
        ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
        rows_b,
    )
    exams = [(rows_b[i][0], rows_b[i + 1][0]) for i in range(0, len(rows_b), 2)]
    with (messidor / EXAM_LIST).open("w", newline="") as f:
        csv.writer(f, delimiter=";", lineterminator="\n").writerows([("left", "right"), *exams])

    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info(
        "wrote %d APTOS-like and %d (+%d ungradable) Messidor-like images to %s",
        n_domain_a,
        n_domain_b,
        n_bad,
        out_dir,
    )
    return {"aptos": out_dir / "aptos", "messidor": out_dir / "messidor"}
