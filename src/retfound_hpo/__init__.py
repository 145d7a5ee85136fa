"""LoRA hyperparameter search for RETFound on diabetic-retinopathy grading, as a DVC pipeline.

Subpackages by pipeline concept, imports only downward (tests/test_architecture.py keeps it so):

    core        params sections, their checks, errors, atomic files, the stage runner
    data        readers, preprocessing, splits, duplicates, the synthetic demo   (prepare-split)
    model       backbones, RETFound checkpoints, LoRA adapters, saved models
    metrics     pure metric, interval, threshold, DeLong and calibration functions
    training    the one fit loop, optimiser, hyperparameters -> a run, train-best's work
    search      the Optuna study, objective, workers, fingerprint, preflight   (hpo-search)
    reporting   summary_report.md and plots                                    (export-report)
    evaluation  the cross-dataset evaluation, retfound-compare, retfound-predict
"""
