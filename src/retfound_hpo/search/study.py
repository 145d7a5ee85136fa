"""The study's storage, and opening a study that knows what its trials were made from.

A study records the fingerprint of its inputs (fingerprint.py) when it is created. Reopened
under another fingerprint (new data, another checkpoint, a changed setting or search space),
its trials would answer another question, so they are never reused: the main run keeps the
old study in the same storage as `<study_name>@<its fingerprint id>`, says what changed, and
starts a new `<study_name>`. Changing the inputs back resumes the kept study. A worker that
joins a search is never allowed to do this: its inputs must match the study's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import HpoConfig
from retfound_hpo.core.space import fixed_params
from retfound_hpo.search.fingerprint import describe_changes, fingerprint_id
from retfound_hpo.search.strategy import make_pruner, make_sampler

log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    """A storage URL fit for logs and config.json: no password."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def make_storage(hpo: HpoConfig) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats so that a dead worker's trial is failed (and,
    with hpo.retry_failed_trials, queued again with the same parameters)."""
    url = hpo.storage_url
    engine_kwargs = {}
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Workers on one host take turns writing; wait for the lock instead of failing at 5 s.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    retry = (
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=hpo.retry_failed_trials)
        if hpo.retry_failed_trials
        else None
    )
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=hpo.heartbeat_seconds,
            heartbeat_stale_trial_callback=retry,
        )


def kept_name(study_name: str, fingerprint_key: str) -> str:
    """The name a study is kept under once the inputs change: `<name>@<fingerprint id>`."""
    return f"{study_name}@{fingerprint_key}"


def _move_study(storage: optuna.storages.BaseStorage, source: str, target: str) -> None:
    """Rename a study within its storage (Optuna has no rename: copy, then delete)."""
    if target in optuna.get_all_study_names(storage):  # left by a run cut off mid-move
        optuna.delete_study(study_name=target, storage=storage)
    optuna.copy_study(
        from_study_name=source, from_storage=storage, to_storage=storage, to_study_name=target
    )
    optuna.delete_study(study_name=source, storage=storage)


def _switch_inputs(
    hpo: HpoConfig, storage: optuna.storages.BaseStorage, fingerprint: dict[str, Any]
) -> None:
    """Make `hpo.study_name` the study of these inputs: keep a study of other inputs under
    its fingerprint id, and bring back a kept study of these inputs if there is one."""
    name, url = hpo.study_name, safe_url(hpo.storage_url)
    names = optuna.get_all_study_names(storage)
    wanted = kept_name(name, fingerprint_id(fingerprint))
    if name in names:
        current = optuna.load_study(study_name=name, storage=storage)
        old = current.user_attrs.get("fingerprint")
        if old == fingerprint:
            return
        old_id = current.user_attrs.get("fingerprint_id", "unfingerprinted")
        n_trials = len(current.get_trials(deepcopy=False))
        _move_study(storage, name, kept_name(name, old_id))
        log.warning(
            "study %s in %s was run on other inputs (%s): its %d trial(s) are kept as study "
            "%r in the same storage and are not reused",
            name,
            url,
            describe_changes(old, fingerprint),
            n_trials,
            kept_name(name, old_id),
        )
    if wanted in names:
        _move_study(storage, wanted, name)
        log.info("study %s: resuming the trials kept as %r (made from these inputs)", name, wanted)


def open_study(
    hpo: HpoConfig,
    seed: int,
    fingerprint: dict[str, Any],
    worker_index: int = 0,
    create: bool = True,
) -> optuna.Study:
    """The study of these inputs (`fingerprint`), resumed if it exists.

    With `create` (the main run, before any worker starts: a new database races on table
    creation) a study of other inputs is kept aside and a new one started. Without it (a worker
    joining), the study must exist and match."""
    hpo.study_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(hpo)
    url = safe_url(hpo.storage_url)
    if create:
        _switch_inputs(hpo, storage, fingerprint)
    elif hpo.study_name not in optuna.get_all_study_names(storage):
        raise ConfigError(
            f"hpo.study_name: no study {hpo.study_name!r} in {url}; start the search on the "
            "main machine first (dvc repro hpo-search)"
        )
    else:
        stored = optuna.load_study(study_name=hpo.study_name, storage=storage)
        if stored.user_attrs.get("fingerprint") != fingerprint:
            changes = describe_changes(stored.user_attrs.get("fingerprint"), fingerprint)
            raise ConfigError(
                f"hpo.study_name: study {hpo.study_name!r} in {url} was made from other inputs "
                f"than this worker's ({changes}); a worker needs the same prepared data, "
                "checkpoint and params as the machine that started the search"
            )
    previous = 0
    if hpo.study_name in optuna.get_all_study_names(storage):
        previous = len(optuna.load_study(study_name=hpo.study_name, storage=storage).trials)
    study = optuna.create_study(
        study_name=hpo.study_name,
        storage=storage,
        sampler=make_sampler(hpo, seed, previous, worker_index),
        pruner=make_pruner(hpo),
        directions=["maximize", "minimize"] if hpo.multi_objective else ["maximize"],
        load_if_exists=True,
    )
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("fingerprint_id", fingerprint_id(fingerprint))
    if hpo.multi_objective and worker_index == 0:
        log.info(
            "multi-objective search (%s up, trainable parameters down): pruning is off, "
            "Optuna's pruners rank a single objective",
            hpo.metric,
        )
    return study


def enqueue_known_good(study: optuna.Study, hpo: HpoConfig, counted: int) -> int:
    """Queue each hpo.enqueue_trials set the study does not hold yet, while the budget has room
    (hpo.n_trials counts them); returns how many were queued."""
    held = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False)]
    queued = 0
    for i, values in enumerate(hpo.enqueue_trials):
        fixed = fixed_params(hpo.search_space, values, f"hpo.enqueue_trials[{i}]")
        if fixed in held or counted + queued >= hpo.n_trials:
            continue
        study.enqueue_trial(fixed, user_attrs={"enqueued": i})
        held.append(fixed)
        queued += 1
    if queued:
        log.info("queued %d known-good hyperparameter set(s) to run first", queued)
    return queued
