"""predictions.csv: one row per image, everything every figure in metrics.json is computed from.

Columns: id, true_grade, pred_grade, prob_<c> per grade (the model's float32 probabilities,
written in full: a float32 reads back bit for bit), patient, exam, duplicate_group, unit (the
resampling unit prepare-split recorded), p_referable (P(grade >= 2), float32) and, with an
operating point, referable (1 where p_referable >= the threshold chosen on val). With
temperature scaling, prob_<c> are the scaled probabilities and raw_prob_<c> the model's own.
The evaluation computes its figures from this very table, and `read_predictions` gives it
back with the same dtypes, so that every figure recomputes exactly from the file.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd

from retfound_hpo.data.units import resampling_units
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE, referable_score

GROUP_COLUMNS = ("patient", "exam", "duplicate_group", "unit")
TEXT = {"id": str, **dict.fromkeys(GROUP_COLUMNS, str)}


def predictions_table(
    index: pd.DataFrame,
    probs: np.ndarray,
    threshold: float | None = None,
    raw_probs: np.ndarray | None = None,
) -> pd.DataFrame:
    """The table for a prepared set's index (id, grade, patient, ...) and its probabilities."""
    probs = np.asarray(probs, np.float32)
    table = pd.DataFrame(
        {"id": index["id"].to_numpy(), "true_grade": index["grade"].to_numpy(int)},
    )
    table["pred_grade"] = probs.argmax(axis=1)
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c]
    if raw_probs is not None:
        for c in range(raw_probs.shape[1]):
            table[f"raw_prob_{c}"] = np.asarray(raw_probs[:, c], np.float32)
    for column in GROUP_COLUMNS[:-1]:
        values = index[column] if column in index else pd.Series("", index=index.index)
        table[column] = values.fillna("").astype(str).to_numpy()
    units = index["unit"] if "unit" in index else resampling_units(index)  # older indexes
    table["unit"] = units.astype(str).to_numpy()
    if probs.shape[1] > REFERABLE_GRADE:
        table["p_referable"] = referable_score(probs)
        if threshold is not None:
            table["referable"] = (table["p_referable"] >= threshold).astype(int)
    return table


def table_probs(table: pd.DataFrame, prefix: str = "prob_") -> np.ndarray:
    """The probability columns (N, C) in grade order, float32."""
    pattern = re.compile(rf"{prefix}(\d+)")
    cols = sorted(
        (c for c in table.columns if pattern.fullmatch(c)), key=lambda c: int(c[len(prefix) :])
    )
    return table[cols].to_numpy(np.float32)


def table_units(table: pd.DataFrame) -> np.ndarray:
    """Each row's resampling unit: the recorded one, else (older files) derived again."""
    if "unit" in table and not table["unit"].isna().any():
        return table["unit"].astype(str).to_numpy()
    return resampling_units(table).to_numpy()


def read_predictions(source: str | bytes | io.IOBase) -> pd.DataFrame:
    """A predictions.csv with its dtypes: ids and groups as text, probabilities as float32."""
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    header = pd.read_csv(data, nrows=0).columns
    if hasattr(data, "seek"):
        data.seek(0)
    floats = {c: np.float32 for c in header if "prob_" in c or c == "p_referable"}
    table = pd.read_csv(data, dtype={**TEXT, **floats}, keep_default_na=False)
    for column in GROUP_COLUMNS:
        if column in table:
            table[column] = table[column].astype(str)
    return table
