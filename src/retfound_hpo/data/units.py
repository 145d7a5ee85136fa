"""The resampling unit: the one definition of which images are not independent of each other.

A unit is a connected group of images linked by a shared patient, a shared exam or a shared
near-duplicate group (union-find over the three: two eyes of a patient, the two images of a
Messidor-2 exam and every copy of a photograph end up in one unit, and so does everything they
link to). prepare-split splits by it and records it in each prepared index (`unit`), and the
evaluation, `retfound-compare` and every interval resample it, so that the split, the
intervals and the comparisons agree on what counts as one independent observation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SOURCES = ("patient", "exam", "duplicate_group")  # the columns that can join images
NAMES = {"patient": "patient", "exam": "exam", "duplicate_group": "duplicate group"}


def _labels(table: pd.DataFrame, column: str) -> pd.Series:
    """A grouping column as strings; missing or empty values join nothing (NaN)."""
    if column not in table.columns:
        return pd.Series(np.nan, index=table.index, dtype=object)
    values = table[column].astype("string").str.strip()
    return values.where(values.notna() & (values != ""), np.nan).astype(object)


def resampling_units(table: pd.DataFrame) -> pd.Series:
    """Each row's unit (aligned with the table): the connected groups of `patient`, `exam` and
    `duplicate_group` (whichever columns the table has). A unit is named by its first row's
    patient (its id where there is no patient), so names stay readable and stable."""
    n = len(table)
    edges = []
    for column in SOURCES:
        labels = _labels(table, column)
        codes, _ = pd.factorize(labels)  # -1: no group
        rows = np.flatnonzero(codes >= 0)
        if rows.size:
            first = pd.Series(rows).groupby(codes[rows]).transform("first").to_numpy()
            edges.append(np.stack([first, rows]))
    i, j = np.concatenate(edges, axis=1) if edges else np.empty((2, 0), np.int64)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    names = _labels(table, "patient").fillna(table["id"].astype(str) if "id" in table else "")
    first_name = pd.Series(names.to_numpy()).groupby(component).transform("first")
    return pd.Series(first_name.to_numpy(), index=table.index, name="unit", dtype=object)


def joining(table: pd.DataFrame) -> list[str]:
    """The groupings that put two or more of these images together, in SOURCES order."""
    found = []
    for column in SOURCES:
        counts = _labels(table, column).value_counts()
        if (counts > 1).any():
            found.append(column)
    return found


def describe_units(table: pd.DataFrame, units: pd.Series | None = None) -> dict[str, object]:
    """What the unit is here, for metrics.json and the summary: `unit` ('image' when no two
    images share one, else e.g. 'patient', 'exam', 'patient + duplicate group'), `units` (how
    many) and `unit_note` (one sentence)."""
    units = resampling_units(table) if units is None else units
    n_units, n_images = int(units.nunique()), len(table)
    joined = [NAMES[c] for c in joining(table)]
    if n_units == n_images:
        return {
            "unit": "image",
            "units": n_images,
            "unit_note": "no two images share a patient, exam or duplicate group: images are "
            "treated as independent",
        }
    shared = " or ".join(joined) or "recorded unit"
    return {
        "unit": " + ".join(joined) or "unit",
        "units": n_units,
        "unit_note": f"{n_images} images in {n_units} independent units (connected groups of "
        f"images that share one {shared}); every interval resamples units",
    }
