"""The train-best stage's work: train the search's winner longer and save it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from retfound_hpo.config import Params
from retfound_hpo.errors import ConfigError
from retfound_hpo.model import save_trained_model
from retfound_hpo.search import resolve_hparams, train_config
from retfound_hpo.train import CachedImages, FitResult

log = logging.getLogger(__name__)


def read_best_hparams(params: Params) -> dict:
    """The best trial's hyperparameters from best_params.json, with defaults for the rest."""
    path = params.hpo.study_dir / "best_params.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run the hpo-search stage first")
    best = json.loads(path.read_text())
    suggested = {k: v for k, v in best.items() if k not in ("best_value", "best_trial")}
    return resolve_hparams(suggested, params)


def train_best_model(params: Params, train: CachedImages, val: CachedImages) -> FitResult:
    """Train the best hyperparameters for train_best.epochs and save the best epoch's model."""
    tb = params.train_best
    hparams = read_best_hparams(params)
    log.info("training best hyperparameters %s for up to %d epochs", hparams, tb.epochs)
    model, result = train_config(hparams, params, tb.epochs, tb.early_stopping_patience, train, val)
    out = Path(tb.output_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_trained_model(model, tmp, params.model, hparams)
    shutil.rmtree(out, ignore_errors=True)  # swap in whole: never a half-saved model
    tmp.rename(out)
    return result
