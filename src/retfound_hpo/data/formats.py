"""Readers for public DR datasets in their native layouts, and a generic CSV reader.

Each reader returns one table with columns `id, path, grade, patient`: `path` is the image file,
`patient` groups images of one person so that splits never separate them; with an exam list
(`exams`, exams.py) a column `exam` too. The index, named
`row`, is the line of the labels file each image came from (the header is line 1), so that later
steps such as image decoding can point back at it.

Bad rows (empty or duplicate id, grade not an integer 0-4, unknown patient, missing image file,
a yes/no flag such as Messidor-2's `adjudicated_gradable` that is neither) stop the read with a
DatasetError naming the file, the first bad row and how many there are.
With `skip_bad_rows` each bad row is logged as a warning and dropped instead.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.data.exams import read_exams

log = logging.getLogger(__name__)

SKIP_HINT = "skip_bad_rows: true skips them"
EYE_NAME = re.compile(r"^(?P<patient>.+)_(?:left|right)$")  # EyePACS: 10_left, 10_right
TEMPLATE_FIELDS = ("id", "label", "patient")
# Spellings of a yes/no column (any case), as spreadsheets and scripts write them.
FLAGS = {**dict.fromkeys(("1", "1.0", "true", "yes", "y", "t"), True),
         **dict.fromkeys(("0", "0.0", "false", "no", "n", "f"), False)}  # fmt: skip
FLAG_RULE = "must be 1/0, true/false, yes/no, y/n or t/f"
NONE_LEFT = "no image left to train or evaluate on"


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a dataset beyond its format; the mapping fields are for format 'csv' only."""

    skip_bad_rows: bool = False
    id_column: str | None = None
    label_column: str | None = None
    patient_column: str | None = None  # none: every image is its own patient
    # Image path under `images`: "{id}" unless given, e.g. "{id}.png" or "{label}/{id}".
    path_template: str | None = None
    extension: str | None = None  # appended to the template, e.g. ".png"
    exams: str | None = None  # exam list (Messidor-2's messidor-2.csv): adds column `exam`


MAPPING_OPTIONS = ("id_column", "label_column", "patient_column", "path_template", "extension")
OPTIONS = tuple(f.name for f in dataclasses.fields(ReaderOptions))


def _read_csv(csv: Path, columns: list[str]) -> pd.DataFrame:
    """The labels file as stripped strings indexed by line number, `columns` required."""
    if not csv.is_file():
        raise DatasetError(f"{csv}: labels file not found")
    try:
        # utf-8-sig: a byte-order mark (Excel exports) would otherwise stick to the first name.
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{csv}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{csv}: not a readable CSV file ({e})") from None
    # IDRiD's header has a trailing space ("Risk of macular edema ") and empty columns that
    # pandas names `Unnamed: N`; neither is information.
    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda col: col.str.strip())
    empty_extra = [c for c in df.columns if c.startswith("Unnamed:") and not (df[c] != "").any()]
    df = df.drop(columns=empty_extra)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{csv}: missing column(s) {missing}; found {list(df.columns)}")
    df.index = pd.RangeIndex(2, len(df) + 2, name="row")  # line numbers: the header is line 1
    df = df[(df != "").any(axis=1)]  # spreadsheet exports end with ",,,," lines
    if df.empty:
        raise DatasetError(f"{csv}: no rows")
    return df


def _reject(
    table: pd.DataFrame,
    bad: pd.Series,
    reason: Callable[[pd.Series], str],
    summary: str,
    csv: Path,
    skip: bool,
) -> pd.DataFrame:
    """Stop at the first row flagged `bad`, naming it and the count; or warn and drop each."""
    if not bad.any():
        return table
    if not skip:
        first = table[bad].iloc[0]
        raise DatasetError(
            f"{csv}: row {first.name}{reason(first)}; {int(bad.sum())} {summary} ({SKIP_HINT})"
        )
    for row, record in table[bad].iterrows():
        log.warning("%s: row %d%s; skipped", csv, row, reason(record))
    return table[~bad]


def parse_flags(values: pd.Series) -> pd.Series:
    """A yes/no column as True/False (see FLAGS); other values, empty included, become NaN."""
    return values.str.lower().map(FLAGS)


def _same_name(name: str) -> str:
    """A file name as the user means it: letter case and Unicode form (NFC/NFD) ignored."""
    return unicodedata.normalize("NFC", name).casefold()


def _match_case(paths: pd.Series) -> pd.Series:
    """Point paths that miss only by letter case (IM002385.jpg vs .JPG) or Unicode form (an
    accented name typed on macOS, NFD, and listed on Linux, NFC) at the file on disk."""
    listings: dict[Path, dict[str, str]] = {}

    def resolve(p: str) -> str:
        path = Path(p)
        if path.is_file() or not path.parent.is_dir():
            return p
        if path.parent not in listings:
            listings[path.parent] = {_same_name(f.name): f.name for f in path.parent.iterdir()}
        name = listings[path.parent].get(_same_name(path.name))
        return str(path.with_name(name)) if name else p

    return paths.map(resolve)


def _finish(
    csv: Path,
    df: pd.DataFrame,
    ids: pd.Series,
    paths: list[str],
    label_column: str,
    patients: pd.Series,
    skip: bool,
    no_patient: str = "no patient",
    rows: str = "rows",
) -> pd.DataFrame:
    """Assemble `id, path, grade, patient` and check every row (see the module docstring)."""
    table = pd.DataFrame(
        {"id": ids, "path": paths, "grade": df[label_column], "patient": patients},
        index=df.index,
    )
    check = dict(csv=csv, skip=skip)
    table = _reject(table, table["id"] == "", lambda r: ": empty id", "row(s) without id", **check)
    grades = pd.to_numeric(table["grade"], errors="coerce")
    table = _reject(
        table,
        ~grades.isin(range(5)),
        lambda r: f" ({label_column}={r['grade']!r}): grade must be an integer 0-4",
        "bad row(s)",
        **check,
    )
    table["grade"] = pd.to_numeric(table["grade"]).astype("int64")
    table = _reject(
        table,
        table["id"].duplicated(),
        lambda r: f": duplicate id {r['id']!r}",
        "duplicate(s)",
        **check,
    )
    table = _reject(
        table,
        table["patient"].fillna("") == "",
        lambda r: f": id {r['id']!r}: {no_patient}",
        "row(s) without patient",
        **check,
    )
    table["path"] = _match_case(table["path"])
    table = _reject(
        table,
        ~table["path"].map(lambda p: Path(p).is_file()),
        lambda r: f": image {r['path']} not found",
        "missing image(s)",
        **check,
    )
    if table.empty:
        raise DatasetError(f"{csv}: all {len(df)} {rows} are bad and were skipped; {NONE_LEFT}")
    return table


def read_aptos(csv: Path, images: Path, opts: ReaderOptions) -> pd.DataFrame:
    """APTOS-2019: `id_code,diagnosis`, images `<images>/<id_code>.png`; one image per patient."""
    df = _read_csv(csv, ["id_code", "diagnosis"])
    ids = df["id_code"]
    paths = [str(images / f"{i}.png") for i in ids]
    return _finish(csv, df, ids, paths, "diagnosis", ids, opts.skip_bad_rows)


def read_eyepacs(csv: Path, images: Path, opts: ReaderOptions) -> pd.DataFrame:
    """EyePACS (Kaggle 2015): `image,level`, images `<images>/<image>.jpeg`; `10_left` and
    `10_right` are the eyes of patient 10."""
    df = _read_csv(csv, ["image", "level"])
    ids = df["image"]
    paths = [str(images / f"{i}.jpeg") for i in ids]
    patients = ids.str.extract(EYE_NAME)["patient"]
    rule = "name is not <patient>_left or <patient>_right"
    return _finish(csv, df, ids, paths, "level", patients, opts.skip_bad_rows, rule)


def read_messidor(csv: Path, images: Path, opts: ReaderOptions) -> pd.DataFrame:
    """Messidor-2: `image_id,adjudicated_dr_grade,...`; ungradable rows are dropped."""
    df = _read_csv(csv, ["image_id", "adjudicated_dr_grade", "adjudicated_gradable"])
    flag, n = "adjudicated_gradable", len(df)
    df = _reject(
        df,
        parse_flags(df[flag]).isna(),
        lambda r: f" ({flag}={r[flag]!r}): {FLAG_RULE} (any case)",
        "bad row(s)",
        csv,
        opts.skip_bad_rows,
    )
    gradable = parse_flags(df[flag]).astype(bool)
    if not gradable.any():
        why = f"all {n} rows are ungradable ({flag} false)"
        if len(df) < n:
            why = f"none of the {n} rows is usable: {len(df)} ungradable, {n - len(df)} bad"
        raise DatasetError(f"{csv}: {why}; {NONE_LEFT}")
    if (~gradable).any():
        log.info("%s: dropping %d ungradable image(s)", csv, int((~gradable).sum()))
    df = df[gradable]
    ids = df["image_id"]
    paths = [str(images / i) for i in ids]  # ids carry their extension (.png or .jpg)
    # The public Messidor-2 CSV has no patient column; each image is its own group.
    grade = "adjudicated_dr_grade"
    return _finish(csv, df, ids, paths, grade, ids, opts.skip_bad_rows, rows="gradable rows")


def read_idrid(csv: Path, images: Path, opts: ReaderOptions) -> pd.DataFrame:
    """IDRiD grading: `Image name,Retinopathy grade,Risk of macular edema `, images
    `<images>/<Image name>.jpg`; the labels name no patients, so each image is its own."""
    df = _read_csv(csv, ["Image name", "Retinopathy grade"])
    ids = df["Image name"]
    paths = [str(images / f"{i}.jpg") for i in ids]
    return _finish(csv, df, ids, paths, "Retinopathy grade", ids, opts.skip_bad_rows)


def read_mapped_csv(csv: Path, images: Path, opts: ReaderOptions) -> pd.DataFrame:
    """Any CSV: `id_column`, `label_column` (grades 0-4), optional `patient_column`; image at
    `<images>/<path_template><extension>`, the template filled from {id}, {label}, {patient}."""
    if not opts.id_column or not opts.label_column:
        raise DatasetError(
            f"{csv}: format 'csv' needs id_column and label_column (got {opts.id_column!r}, "
            f"{opts.label_column!r})"
        )
    template = (opts.path_template or "{id}") + (opts.extension or "")
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if not fields <= set(TEMPLATE_FIELDS) or "id" not in fields:
        raise DatasetError(
            f"path_template {template!r}: use {{id}} and optionally {{label}}, {{patient}}; "
            f"got fields {sorted(fields)}"
        )
    columns = [opts.id_column, opts.label_column]
    df = _read_csv(csv, columns + ([opts.patient_column] if opts.patient_column else []))
    ids = df[opts.id_column]
    patients = df[opts.patient_column] if opts.patient_column else ids
    paths = [
        str(images / template.format(id=i, label=label, patient=p))
        for i, label, p in zip(ids, df[opts.label_column], patients, strict=True)
    ]
    no_patient = f"empty {opts.patient_column}"
    return _finish(csv, df, ids, paths, opts.label_column, patients, opts.skip_bad_rows, no_patient)


READERS = {
    "aptos": read_aptos,
    "eyepacs": read_eyepacs,
    "messidor": read_messidor,
    "idrid": read_idrid,
    "csv": read_mapped_csv,
}


def read_dataset(fmt: str, csv: str | Path, images: str | Path, **options) -> pd.DataFrame:
    """Read a dataset in native format `fmt` into `id, path, grade, patient` (see ReaderOptions)."""
    if fmt not in READERS:
        raise DatasetError(f"data.format: {fmt!r} is not supported; choose one of {list(READERS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"unknown reader option(s) {unknown}; allowed: {list(OPTIONS)}")
    opts = ReaderOptions(**options)
    mapping = [k for k in MAPPING_OPTIONS if getattr(opts, k) is not None]
    if fmt != "csv" and mapping:
        raise DatasetError(
            f"{csv}: {mapping} apply only to format 'csv'; format {fmt!r} has fixed columns"
        )
    table = READERS[fmt](Path(csv), Path(images), opts)
    if opts.exams:
        table["exam"] = read_exams(opts.exams, table, csv)
    log.info("read %d images from %s (%s format)", len(table), csv, fmt)
    return table
