"""Patient-level, grade-stratified train/val/test split from the seed."""

from __future__ import annotations

import logging
import math

import pandas as pd
from sklearn.model_selection import train_test_split

from retfound_hpo.core.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def check_stratifiable(
    strata: pd.Series,
    val_fraction: float,
    test_fraction: float,
    source: str | None = None,
    num_classes: int | None = None,
) -> None:
    """Stop unless every grade of the task has enough split units (`strata`: each unit's grade)
    to reach train, val and test.

    A split without a grade trains a model that never sees it, and a metric over one grade is
    meaningless (100 % accuracy, NaN kappa), so a missing grade is refused like a rare one.
    """
    counts = strata.value_counts()
    if num_classes is not None:
        counts = counts.reindex(range(num_classes), fill_value=0)
    # The smallest share decides: 0.49 + 0.49 leaves train 2 %, so 50 patients per grade.
    smallest = min(val_fraction, test_fraction, 1 - val_fraction - test_fraction)
    needed = max(2, math.ceil(1 / smallest - 1e-9)) if smallest > 0 else None
    where = f"{source}: " if source else ""
    if needed is None:
        raise DatasetError(
            f"{where}data.val_fraction {val_fraction} + data.test_fraction {test_fraction} "
            "leave no training split; keep their sum below 1"
        )
    rare = counts[counts < needed]
    if not rare.empty:
        have = ", ".join(f"{int(g)}: {int(n)}" for g, n in counts.sort_index().items())
        raise DatasetError(
            f"{where}grade {int(rare.index[0])} has {int(rare.iloc[0])} patient(s) (per grade: "
            f"{have}); splitting into train ({1 - val_fraction - test_fraction:.2f}), val "
            f"({val_fraction}) and test ({test_fraction}) needs at least {needed} per grade; "
            f"{len(rare)} grade(s) short (add data, change the fractions"
            + (", or set model.num_classes" if num_classes is not None else "")
            + ")"
        )


def split_dataset(
    table: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    source: str | None = None,
    units: pd.Series | None = None,
    num_classes: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Split images so that each patient lands in exactly one split, stratified by grade.

    `units` (aligned with the table) names what must stay together (prepare-split passes the
    resampling unit of units.py: patients, exams and duplicates joined), default the patient; a
    unit's stratum is its worst grade, so both eyes follow the more severe one. Each part keeps
    the table's index (read_dataset's labels-file lines). `source` names the labels file in
    errors.
    """
    units = table["patient"] if units is None else units
    strata = table["grade"].groupby(units).max()  # (units,)
    check_stratifiable(strata, val_fraction, test_fraction, source, num_classes)
    rest, test = train_test_split(
        strata.index, test_size=test_fraction, stratify=strata.values, random_state=seed
    )
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=strata.loc[rest].values, random_state=seed + 1
    )
    out = {}
    for name, ids in zip(SPLITS, (train, val, test), strict=True):
        part = table[units.isin(set(ids))].sort_values("id")
        out[name] = part
        log.info(
            "%s: %d images, grades %s",
            name,
            len(part),
            part["grade"].value_counts().sort_index().to_dict(),
        )
    return out


def summarize_splits(splits: dict[str, pd.DataFrame], num_classes: int = 5) -> dict:
    """Counts per split and grade, for the data summary metric: images, patients, exams (where
    an exam list names them), resampling units (units.py) and images per grade."""
    summary = {}
    for name, part in splits.items():
        counts = part["grade"].value_counts()
        exams = part["exam"].replace("", None).dropna() if "exam" in part else []
        summary[name] = {
            "images": len(part),
            "patients": int(part["patient"].nunique()),
            **({"exams": int(exams.nunique())} if len(exams) else {}),
            **({"units": int(part["unit"].nunique())} if "unit" in part else {}),
            **{f"grade_{g}": int(counts.get(g, 0)) for g in range(num_classes)},
        }
    return summary
