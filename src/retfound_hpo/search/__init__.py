"""hpo-search's concept: the Optuna study, its objective, workers, fingerprint and outputs."""
