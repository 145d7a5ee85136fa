"""The guide's search outputs: config.json, trials.csv, best_params.json and study.pkl."""

from __future__ import annotations

import copy
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from retfound_hpo.core.params import HpoConfig
from retfound_hpo.search.budget import uncounted_numbers
from retfound_hpo.search.storage import safe_url
from retfound_hpo.search.study import keep_aside

log = logging.getLogger(__name__)

GUIDE_HPARAMS = ("lora_r", "lora_alpha", "learning_rate", "batch_size", "dropout")
# Trial attributes that are not trials.csv columns: lists and dicts, and internal marks.
NOT_COLUMNS = ("hparams", "history", "setup_error")


def drawn_hparams(trial: FrozenTrial, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's value of every search-space entry (case-specific Optuna names mapped back)."""
    values = {name.split("|")[0]: value for name, value in trial.params.items()}
    return {name: values.get(name) for name in space}


def trials_table(study: optuna.Study, hpo: HpoConfig) -> pd.DataFrame:
    """The guide's trials.csv columns, then everything else the trials recorded."""
    space, metric = hpo.search_space, hpo.metric
    names = [k for k in GUIDE_HPARAMS if k in space] + [k for k in space if k not in GUIDE_HPARAMS]
    multi = len(study.directions) > 1
    rows = []
    uncounted = uncounted_numbers(study, study.trials)
    for t in study.trials:
        values = list(t.values or [None] * len(study.directions))
        if t.state == TrialState.PRUNED:  # Optuna's value is the last pruning signal
            values[0] = t.user_attrs.get(f"val_{metric}")  # the best before it was stopped
        drawn = drawn_hparams(t, space)
        attrs = {k: v for k, v in t.user_attrs.items() if k not in NOT_COLUMNS}
        if t.state == TrialState.FAIL and not attrs.get("fail_reason"):
            attrs["fail_reason"] = "worker stopped sending heartbeats (killed or crashed)"
        if t.number in uncounted:
            attrs["fail_reason"] = f"{attrs['fail_reason']} (not counted toward hpo.n_trials)"
        rows.append(
            {
                "trial_number": t.number,
                **{k: drawn[k] for k in names},
                hpo.objective_column: values[0],
                **({"objective_trainable_params": values[1]} if multi else {}),
                "state": t.state.name,
                "duration_seconds": t.duration.total_seconds() if t.duration else None,
                "datetime_start": t.datetime_start,
                "datetime_complete": t.datetime_complete,
                "objective": values[0],  # the same under one name for every hpo.metric (DVC plot)
                **attrs,
            }
        )
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial; in multi-objective mode, the Pareto trial with the best metric."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))


def _snapshot_storage(path: Path) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}")
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split("\n")[0].split())
        raise ConfigError(
            f"hpo.output_dir: {path} is not an Optuna SQLite database ({reason}); move it "
            "away (it is not overwritten) and rerun"
        ) from None


def check_snapshot(hpo: HpoConfig) -> None:
    """Before any trial: a study.db that the snapshot would go into must be a study database."""
    path = hpo.study_dir / "study.db"
    if hpo.storage_url != hpo.snapshot_url and path.exists():
        _snapshot_storage(path).engine.dispose()


def write_study_snapshot(study: optuna.Study, hpo: HpoConfig) -> None:
    """study.db as a copy of a study that lives in a shared storage (export-report reads it).

    What study.db held under the study's name is replaced only when it is an earlier copy of
    the same storage's study of the same inputs; a local study, or a copy of another storage's
    or of other inputs, is kept aside in study.db (study.keep_aside), as are kept studies."""
    path = hpo.study_dir / "study.db"
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    if path.exists():
        shutil.copyfile(path, tmp)
    source, name = safe_url(hpo.storage_url), study.study_name
    target = _snapshot_storage(tmp)
    try:
        if name in optuna.get_all_study_names(target):
            old = optuna.load_study(study_name=name, storage=target)
            same = old.user_attrs.get("snapshot_of") == source and old.user_attrs.get(
                "fingerprint"
            ) == study.user_attrs.get("fingerprint")
            if same:
                optuna.delete_study(study_name=name, storage=target)
            elif kept := keep_aside(target, old):
                log.warning("%s: study %s there is kept as %r", path, name, kept)
        optuna.copy_study(from_study_name=name, from_storage=study._storage, to_storage=target)
        optuna.load_study(study_name=name, storage=target).set_user_attr("snapshot_of", source)
    finally:
        target.engine.dispose()
    tmp.replace(path)


def write_search_outputs(
    study: optuna.Study, hpo: HpoConfig, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """Write config.json (`settings`: the run's params, as a dict), trials.csv, best_params.json
    and a self-contained study.pkl; return best_params (None before any trial completed)."""
    out = hpo.study_dir
    settings = copy.deepcopy(settings)
    if hpo.storage:  # a PostgreSQL URL may carry a password
        settings["hpo"]["storage"] = safe_url(hpo.storage)
    config = {
        **settings,
        "storage": safe_url(hpo.storage_url),
        "versions": {"optuna": optuna.__version__},
    }
    write_json_atomic(out / "config.json", config)
    table = trials_table(study, hpo)
    write_text_atomic(out / "trials.csv", table.to_csv(index=False))

    # study.pkl for the guide's users: an in-memory copy, so it unpickles without the database.
    memory = optuna.storages.InMemoryStorage()
    optuna.copy_study(
        from_study_name=study.study_name, from_storage=study._storage, to_storage=memory
    )
    in_memory = optuna.load_study(study_name=study.study_name, storage=memory)
    write_bytes_atomic(out / "study.pkl", pickle.dumps(in_memory))
    if hpo.storage_url != hpo.snapshot_url:
        write_study_snapshot(in_memory, hpo)

    best = best_trial(study)
    if best is None:
        return None
    drawn = {k: v for k, v in drawn_hparams(best, hpo.search_space).items() if v is not None}
    best_params = {**drawn, "best_value": round(best.values[0], 4), "best_trial": best.number}
    write_json_atomic(out / "best_params.json", best_params)
    return best_params
