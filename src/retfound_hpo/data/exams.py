"""Exam lists: which images are the two eyes of one examination (`data.exams`, or `exams` of an
evaluate.datasets entry).

The layout is Messidor-2's `messidor-2.csv`, as ADCIS distributes it with the images: one exam
per line, its two image file names in columns `left` and `right`, separated by semicolons
(`left;right` header; commas work too). Messidor-2 is 874 exams of two eyes (1,748 images):
both images of an exam must share a split and a resampling unit, and papers report per-exam
referral (an exam is referable when either eye is). Images are matched by file name without
extension, in any letter case (the grades file may spell `IM000013.JPG` as `IM000013.jpg`). An
image of the list that the labels file lacks (ungradable, or never graded: the public grades
cover 1,744 of the 1,748) is left out; a labelled image that is in no exam, an image listed
twice, an empty or repeated name, or a missing column stops with the file and the row.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import pandas as pd

from retfound_hpo.core.errors import DatasetError

log = logging.getLogger(__name__)

SIDES = ("left", "right")
LAYOUT = "expected Messidor-2's messidor-2.csv layout: a 'left;right' header, two images a line"


def image_key(name: str) -> str:
    """How an exam list names an image: file name without folder or extension, lower case."""
    return PurePosixPath(str(name).replace("\\", "/")).stem.strip().lower()


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: exam list not found")
    try:
        first = path.read_text(encoding="utf-8-sig").lstrip().split("\n", 1)[0]
        sep = ";" if ";" in first else ","
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.EmptyDataError, IndexError):
        raise DatasetError(f"{path}: empty exam list; {LAYOUT}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a readable exam list ({e}); {LAYOUT}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not set(SIDES) <= set(table.columns):
        raise DatasetError(
            f"{path}: no 'left' and 'right' columns (found {list(table.columns)}); {LAYOUT}"
        )
    table = table[list(SIDES)].apply(lambda col: col.str.strip())
    table.index = pd.RangeIndex(2, len(table) + 2, name="row")  # the header is line 1
    table = table[(table != "").any(axis=1)]
    if table.empty:
        raise DatasetError(f"{path}: no exams; {LAYOUT}")
    return table


def read_exams(path: str | Path, images: pd.DataFrame, labels: str | Path) -> pd.Series:
    """Each labelled image's exam (aligned with `images`, read_dataset's table): the exam is
    named after its left image; see the module docstring for the checks."""
    path = Path(path)
    table = _read(path)
    exam_of: dict[str, tuple[str, int]] = {}  # image key -> (exam name, row)
    for row, left, right in table.itertuples():
        for side, name in (("left", left), ("right", right)):
            if not name:
                raise DatasetError(f"{path}: row {row}: empty {side} image; {LAYOUT}")
        if image_key(left) == image_key(right):
            raise DatasetError(f"{path}: row {row}: left and right are the same image {left!r}")
        for name in (left, right):
            if image_key(name) in exam_of:
                first = exam_of[image_key(name)][1]
                raise DatasetError(
                    f"{path}: row {row}: image {name!r} is already in the exam of row {first}"
                )
            exam_of[image_key(name)] = (image_key(left), row)
    keys = images["id"].map(image_key)
    missing = ~keys.isin(exam_of.keys())
    if missing.any():
        first = images[missing].iloc[0]
        raise DatasetError(
            f"{labels}: row {first.name}: image {first['id']!r} is in no exam of {path} "
            f"({int(missing.sum())} image(s) in none); is it the exam list of this data set?"
        )
    unlabelled = len(exam_of) - len(keys)
    if unlabelled:
        log.info("%s: %d listed image(s) without a usable grade left out", path, unlabelled)
    exams = keys.map(lambda k: exam_of[k][0])
    log.info("%s: %d images in %d exams", path, len(exams), exams.nunique())
    return exams.rename("exam")
