"""Readers for public DR datasets in their native layouts.

Each reader returns one table with columns `id, path, grade, patient`: `path` is the image file,
`patient` groups images of one person so that splits never separate them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the row and what is wrong."""


def _read_csv(csv: Path, columns: list[str]) -> pd.DataFrame:
    if not csv.is_file():
        raise DatasetError(f"{csv}: labels file not found")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{csv}: missing column(s) {missing}; found {list(df.columns)}")
    if df.empty:
        raise DatasetError(f"{csv}: no rows")
    return df


def _parse_grades(df: pd.DataFrame, column: str, csv: Path) -> pd.Series:
    grades = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = ~grades.isin(range(5))
    if bad.any():
        row = bad.idxmax()  # index labels are CSV data-row numbers: line = label + 2
        raise DatasetError(
            f"{csv}: row {row + 2} ({column}={df.loc[row, column]!r}): grade must be an integer "
            f"0-4; {int(bad.sum())} bad row(s)"
        )
    return grades.astype(int)


def _check_ids_and_files(table: pd.DataFrame, csv: Path) -> pd.DataFrame:
    dup = table["id"].duplicated()
    if dup.any():
        row = dup.idxmax()
        raise DatasetError(
            f"{csv}: row {row + 2}: duplicate id {table.loc[row, 'id']!r}; "
            f"{int(dup.sum())} duplicate(s)"
        )
    exists = table["path"].map(lambda p: Path(p).is_file())
    if not exists.all():
        row = (~exists).idxmax()
        raise DatasetError(
            f"{csv}: row {row + 2}: image {table.loc[row, 'path']} not found; "
            f"{int((~exists).sum())} missing image(s)"
        )
    return table.reset_index(drop=True)


def read_aptos(csv: Path, images: Path) -> pd.DataFrame:
    """APTOS-2019: `id_code,diagnosis`, images `<images>/<id_code>.png`; one image per patient."""
    df = _read_csv(csv, ["id_code", "diagnosis"])
    ids = df["id_code"].str.strip()
    table = pd.DataFrame(
        {
            "id": ids,
            "path": [str(images / f"{i}.png") for i in ids],
            "grade": _parse_grades(df, "diagnosis", csv),
            "patient": ids,
        },
        index=df.index,
    )
    return _check_ids_and_files(table, csv)


def read_messidor(csv: Path, images: Path) -> pd.DataFrame:
    """Messidor-2: `image_id,adjudicated_dr_grade,...`; ungradable rows are dropped."""
    df = _read_csv(csv, ["image_id", "adjudicated_dr_grade", "adjudicated_gradable"])
    gradable = df["adjudicated_gradable"].str.strip() == "1"
    if (~gradable).any():
        log.info("%s: dropping %d ungradable image(s)", csv, int((~gradable).sum()))
    df = df[gradable]
    ids = df["image_id"].str.strip()
    table = pd.DataFrame(
        {
            "id": ids,
            "path": [str(images / i) for i in ids],
            "grade": _parse_grades(df, "adjudicated_dr_grade", csv),
            # The public Messidor-2 CSV has no patient column; each image is its own group.
            "patient": ids,
        },
        index=df.index,
    )
    return _check_ids_and_files(table, csv)


READERS = {"aptos": read_aptos, "messidor": read_messidor}


def read_dataset(fmt: str, csv: str | Path, images: str | Path) -> pd.DataFrame:
    """Read a dataset in native format `fmt` into `id, path, grade, patient`."""
    if fmt not in READERS:
        raise DatasetError(f"data.format: {fmt!r} is not supported; choose one of {list(READERS)}")
    table = READERS[fmt](Path(csv), Path(images))
    log.info("read %d images from %s (%s format)", len(table), csv, fmt)
    return table
