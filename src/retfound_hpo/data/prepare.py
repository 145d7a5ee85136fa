"""The prepare-split stage's work: demo data, reading, splitting, and the preprocessed caches."""

from __future__ import annotations

import logging
from pathlib import Path

from retfound_hpo.config import Params
from retfound_hpo.data.formats import read_dataset
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.data.splits import split_dataset, summarize_splits
from retfound_hpo.data.synthetic import write_demo_datasets
from retfound_hpo.io import write_text_atomic

log = logging.getLogger(__name__)


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

    # Read and validate every dataset before the slow preprocessing starts.
    table = read_dataset(data.format, data.csv, data.images)
    external = {
        ds.name: read_dataset(ds.format, ds.csv, ds.images) for ds in params.evaluate.datasets
    }
    splits = split_dataset(table, data.val_fraction, data.test_fraction, params.seed)
    for name, part in splits.items():
        write_text_atomic(Path(data.splits_dir) / f"{name}.csv", part.to_csv(index=False))

    prepared = Path(data.prepared_dir)
    for name, part in {**splits, **external}.items():
        prepare_images(part, prepared / name, size)
    summary = summarize_splits({**splits, **external}, params.model.num_classes)
    return {"image_size": size, **summary}
