"""The prepare-split stage's work: demo data, reading, duplicates, splitting, and the caches."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.files import write_text_atomic
from retfound_hpo.core.params import DataConfig, EvalDataset
from retfound_hpo.data.demo.synthetic import write_demo_datasets
from retfound_hpo.data.duplicates import (
    cross_duplicates,
    drop_conflicting,
    duplicate_groups,
    duplicates_summary,
    find_duplicates,
    hash_images,
    log_duplicates,
)
from retfound_hpo.data.formats import OPTIONS, read_dataset
from retfound_hpo.data.prepared import PreparedImages, load_prepared
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.data.splits import check_stratifiable, split_dataset, summarize_splits
from retfound_hpo.data.units import resampling_units

log = logging.getLogger(__name__)

POOL = ".unsplit"  # the decoded training data, under prepared_dir while the stage runs
# index.csv of a prepared set: what evaluation needs to group images as the split did
INDEX_COLUMNS = ["id", "grade", "patient", "path", "exam", "duplicate_group", "unit"]


def reader_options(cfg: DataConfig | EvalDataset) -> dict:
    """The reader options (skip_bad_rows, the generic-csv column mapping) a config section sets."""
    return {name: getattr(cfg, name) for name in OPTIONS}


def check_grades(tables: list[tuple[str, pd.DataFrame]], num_classes: int) -> None:
    """Stop when a labels file holds a grade the model has no class for, naming the first row."""
    highest = max(int(table["grade"].max()) for _, table in tables)
    for csv, table in tables:
        above = table[table["grade"] >= num_classes]
        if not above.empty:
            raise ConfigError(
                f"model.num_classes: {num_classes} is not allowed; {csv} row {above.index[0]} "
                f"has grade {above['grade'].iloc[0]} (set model.num_classes: {highest + 1})"
            )


def _prepare(
    part: pd.DataFrame, out: Path, size: int, cfg: DataConfig | EvalDataset
) -> pd.DataFrame:
    """Build one cache; return the rows it holds (fewer when unreadable images were skipped)."""
    prepare_images(part, out, size, skip_bad_rows=cfg.skip_bad_rows, source=cfg.csv)
    kept = set(load_prepared(out)[1]["id"])
    return part[part["id"].isin(kept)]


def with_units(table: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """The table with `exam` (empty without an exam list), `duplicate_group` and `unit`."""
    table = table.assign(exam=table["exam"] if "exam" in table else "")
    table = table.assign(duplicate_group=duplicate_groups(table, records))
    return table.assign(unit=resampling_units(table))


def _prepare_evaluation_set(
    ds: EvalDataset, table: pd.DataFrame, out: Path, size: int, max_distance: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Prepare one evaluation set, its units joined by its own duplicates too; return the rows
    it holds (with units) and their hashes."""
    part = _prepare(table, out, size, ds)
    hashes = hash_images(load_prepared(out)[0])
    part = with_units(part, find_duplicates(part, hashes, max_distance))
    write_text_atomic(out / "index.csv", part[INDEX_COLUMNS].to_csv(index=False))
    return part, hashes


def _cut(pool: PreparedImages, positions: np.ndarray, part: pd.DataFrame, out: Path) -> None:
    """Write the prepared set of `part` from the pool's images at `positions`, whole or not at
    all (built in `<out>.tmp`, as prepare_images does)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(part), *pool.shape[1:])
        )
        for i, position in enumerate(positions):
            images[i] = pool[position]
        images.flush()
        del images
        part[INDEX_COLUMNS].to_csv(tmp / "index.csv", index=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)


def prepare_split(
    data: DataConfig,
    datasets: tuple[EvalDataset, ...],
    *,
    input_size: int,
    num_classes: int,
    seed: int,
) -> dict:
    """Write split CSVs and prepared caches (`input_size` px) for the training data and every
    evaluation set (`datasets`, evaluate.datasets); return the data summary."""
    size = input_size
    demo_dir = Path(data.demo.out_dir)
    if data.demo.enabled:
        write_demo_datasets(
            demo_dir,
            data.demo.n_domain_a,
            data.demo.n_domain_b,
            seed=seed,
            lesion_scale=data.demo.lesion_scale,
        )
    else:  # the folder is a declared output; say why it is empty
        write_text_atomic(demo_dir / "README.txt", "data.demo.enabled is false: no demo data.\n")

    # Read and validate every dataset (labels, ids, files) before the slow preprocessing starts.
    table = read_dataset(data.format, data.csv, data.images, **reader_options(data))
    external = {
        ds.name: read_dataset(ds.format, ds.csv, ds.images, **reader_options(ds)) for ds in datasets
    }
    labels = [(data.csv, table)] + [(ds.csv, external[ds.name]) for ds in datasets]
    check_grades(labels, num_classes)
    # Patients and exams can only be merged further by duplicates: check the split is possible.
    units = resampling_units(table)
    strata = table["grade"].groupby(units).max()
    check_stratifiable(strata, data.val_fraction, data.test_fraction, data.csv, num_classes)

    # The training data is decoded once, into a pool that the duplicate hash reads and the split
    # caches are cut from. A split CSV is written after its cache (skipped images leave both).
    # All sets or none: a failure removes what this run wrote before it.
    prepared, done, written = Path(data.prepared_dir), {}, []
    pool_dir = prepared / POOL
    try:
        written.append(pool_dir)
        table = _prepare(table, pool_dir, size, data)
        pool = load_prepared(pool_dir)[0]
        position = pd.Series(np.arange(len(table)), index=table.index)  # row -> pool image
        hashes = hash_images(pool)  # (N, 32), in table order
        records = find_duplicates(table, hashes, data.duplicate_distance)
        if data.duplicates == "drop_conflicting":
            table = drop_conflicting(table, records)
        table = with_units(table, records)  # patients, exams and duplicates merged
        splits = split_dataset(
            table, data.val_fraction, data.test_fraction, seed, data.csv, table["unit"], num_classes
        )
        split_hashes = {}
        for name, part in splits.items():
            positions = position.loc[part.index].to_numpy()
            written.append(prepared / name)
            _cut(pool, positions, part, prepared / name)
            split_hashes[name], done[name] = hashes[positions], part
            written.append(Path(data.splits_dir) / f"{name}.csv")
            write_text_atomic(written[-1], part.to_csv(index=False))
        report = duplicates_summary(records, splits)
        # An evaluation image that copies a split image is not independent evidence: report it.
        for ds in datasets:
            written.append(prepared / ds.name)
            done[ds.name], ds_hashes = _prepare_evaluation_set(
                ds, external[ds.name], prepared / ds.name, size, data.duplicate_distance
            )
            report["cross_dataset"][ds.name] = cross_duplicates(
                done[ds.name], ds_hashes, splits, split_hashes, data.duplicate_distance
            )
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                missing_ok=True
            )
        raise
    finally:
        shutil.rmtree(pool_dir, ignore_errors=True)
    log_duplicates(report)
    summary = summarize_splits(done, num_classes)
    return {"image_size": size, **summary, "duplicates": report}
