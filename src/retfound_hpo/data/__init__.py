"""prepare-split's concept: dataset readers, preprocessing, splits, duplicates, prepared sets."""
