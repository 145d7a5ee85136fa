"""The prepare-split stage's work: demo data, reading, splitting, and the preprocessed caches."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from retfound_hpo.config import DataConfig, EvalDataset, Params
from retfound_hpo.data.formats import OPTIONS, read_dataset
from retfound_hpo.data.preprocess import load_prepared, prepare_images
from retfound_hpo.data.splits import split_dataset, summarize_splits
from retfound_hpo.data.synthetic import write_demo_datasets
from retfound_hpo.errors import ConfigError
from retfound_hpo.io import write_text_atomic

log = logging.getLogger(__name__)


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


def prepare_split(params: Params) -> dict:
    """Write split CSVs and prepared caches for the training data and every evaluation set."""
    data, size = params.data, params.model.input_size
    demo_dir = Path(data.demo.out_dir)
    if data.demo.enabled:
        write_demo_datasets(
            demo_dir,
            data.demo.n_domain_a,
            data.demo.n_domain_b,
            seed=params.seed,
            lesion_scale=data.demo.lesion_scale,
        )
    else:  # the folder is a declared output; say why it is empty
        write_text_atomic(demo_dir / "README.txt", "data.demo.enabled is false: no demo data.\n")

    # Read and validate every dataset (labels, ids, files) before the slow preprocessing starts.
    table = read_dataset(data.format, data.csv, data.images, **reader_options(data))
    external = {
        ds.name: read_dataset(ds.format, ds.csv, ds.images, **reader_options(ds))
        for ds in params.evaluate.datasets
    }
    labels = [(data.csv, table)] + [(ds.csv, external[ds.name]) for ds in params.evaluate.datasets]
    check_grades(labels, params.model.num_classes)
    splits = split_dataset(table, data.val_fraction, data.test_fraction, params.seed, data.csv)

    # Images are decoded only here, so a split CSV is written after its cache (skipped images
    # leave both). All sets or none: a failure removes what this run wrote before it.
    prepared, done, written = Path(data.prepared_dir), {}, []
    try:
        for name, part in splits.items():
            written.append(prepared / name)
            done[name] = _prepare(part, prepared / name, size, data)
            written.append(Path(data.splits_dir) / f"{name}.csv")
            write_text_atomic(written[-1], done[name].to_csv(index=False))
        for ds in params.evaluate.datasets:
            written.append(prepared / ds.name)
            done[ds.name] = _prepare(external[ds.name], prepared / ds.name, size, ds)
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                missing_ok=True
            )
        raise
    summary = summarize_splits(done, params.model.num_classes)
    return {"image_size": size, **summary}
