"""The train-best stage's work: train the search's winner longer, once per seed, and save it.

A seed (train_best.seeds, default just `seed`) drives LoRA and head initialisation, data order and
augmentation. Every seed's model is kept in <seeds_dir>/<seed>/, and output_dir gets a copy of the
seed best on validation (by hpo.metric; a tie goes to the first seed listed), so that a reader can
tell a better variant from a lucky seed and a user still gets one model. The test split plays no
part in the choice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import ModelConfig, TrainBestConfig, TrainConfig
from retfound_hpo.model.saved import save_trained_model
from retfound_hpo.training.hparams import resolve_hparams, train_with_hparams
from retfound_hpo.training.inputs import CachedImages
from retfound_hpo.training.loop import FitResult

log = logging.getLogger(__name__)


def read_best_hparams(path: Path, model: ModelConfig, train: TrainConfig) -> dict:
    """The best trial's hyperparameters from best_params.json, with defaults for the rest."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run the hpo-search stage first")
    best = json.loads(path.read_text())
    suggested = {k: v for k, v in best.items() if k not in ("best_value", "best_trial")}
    return resolve_hparams(suggested, model, train)


@dataclass
class SeedRuns:
    """Every seed's training result and the seed delivered as the best model."""

    results: dict[int, FitResult]  # in the order the seeds were listed
    best_seed: int
    delivery_bytes: dict[int, int] = dataclasses.field(default_factory=dict)  # model on disk

    @property
    def best(self) -> FitResult:
        return self.results[self.best_seed]

    def metrics(self) -> dict:
        """The delivered seed's figures (best_epoch, epochs_run, val_*), best_seed, and per seed
        (keyed by seed, for `dvc metrics diff`) the same figures."""
        per_seed = {
            str(seed): _summary(result, self.delivery_bytes.get(seed))
            for seed, result in self.results.items()
        }
        best = _summary(self.best, self.delivery_bytes.get(self.best_seed))
        return {**best, "best_seed": self.best_seed, "seeds": per_seed}

    def history(self) -> pd.DataFrame:
        """The delivered seed's per-epoch history, with its seed."""
        return pd.DataFrame(self.best.history).assign(seed=self.best_seed)


def _summary(result: FitResult, delivery_bytes: int | None = None) -> dict:
    """Best epoch and its val figures, and what the run cost: trainable parameters, mean
    seconds per training epoch, peak memory (MB) and the saved model's size on disk."""
    cost = {
        "trainable_params": result.trainable_params,
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
    }
    if delivery_bytes is not None:
        cost["delivery_bytes"] = delivery_bytes
    return {
        **cost,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        **{f"val_{k}": v for k, v in result.best_metrics.items()},
    }


def train_best_models(
    tb: TrainBestConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    hparams: dict,
    *,
    seed: int,
    metric: str,
    train: CachedImages,
    val: CachedImages,
) -> SeedRuns:
    """Train `hparams` once per seed (train_best.seeds, default just `seed`) for up to
    train_best.epochs, each keeping its best epoch by val `metric`; save each seed's model, then
    deliver the best on validation to train_best.output_dir."""
    seeds = tb.seed_list(seed)
    seeds_dir = Path(tb.seeds_dir)
    staging = _fresh(seeds_dir.with_name(seeds_dir.name + ".tmp"))
    results, delivery = {}, {}
    for i, run_seed in enumerate(seeds, start=1):
        log.info(
            "seed %d (%d of %d): training best hyperparameters %s for up to %d epochs",
            *(run_seed, i, len(seeds), hparams, tb.epochs),
        )
        model, results[run_seed] = train_with_hparams(
            hparams,
            model_cfg,
            train_cfg,
            seed=run_seed,  # initialisation, data order and augmentation
            metric=metric,
            epochs=tb.epochs,
            patience=tb.early_stopping_patience,
            train=train,
            val=val,
        )
        save_trained_model(model, staging / str(run_seed), model_cfg, hparams)
        delivery[run_seed] = sum(f.stat().st_size for f in (staging / str(run_seed)).iterdir())
        del model  # one model in memory at a time

    def score(of_seed: int) -> float:
        value = results[of_seed].best_metrics.get(metric, math.nan)
        return value if math.isfinite(value) else -math.inf

    best_seed = max(seeds, key=score)  # max keeps the first of equal scores
    for s in seeds:
        log.info("seed %d: val %s %.4f%s", s, metric, score(s), " *" if s == best_seed else "")
    _swap_in(staging, seeds_dir)
    delivered = _fresh(Path(tb.output_dir).with_name(Path(tb.output_dir).name + ".tmp"))
    shutil.copytree(seeds_dir / str(best_seed), delivered)
    _swap_in(delivered, Path(tb.output_dir))
    log.info("delivered seed %d's model as %s", best_seed, tb.output_dir)
    return SeedRuns(results, best_seed, delivery)


def _fresh(folder: Path) -> Path:
    """`folder`, removed if a run that was cut off left it behind."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` folder: a reader never sees a half-saved model."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
