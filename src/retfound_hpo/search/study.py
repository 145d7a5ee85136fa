"""Opening a study that knows what its trials were made from; keeping other studies aside.

A study records the fingerprint of its inputs (fingerprint.py) when it is created. Reopened
under another fingerprint (new data, another checkpoint, a changed setting or search space),
its trials would answer another question, so they are never reused: the main run keeps the
old study in the same storage as `<study_name>@<its fingerprint id>`, says what changed, and
starts a new `<study_name>`. Changing the inputs back resumes the kept study. A worker that
joins a search is never allowed to do this: its inputs must match the study's. Nothing is ever
overwritten: a kept study goes to a free name, and only a study without trials is deleted.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import optuna

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import HpoConfig
from retfound_hpo.core.space import fixed_params
from retfound_hpo.search.fingerprint import describe_changes, fingerprint_id
from retfound_hpo.search.storage import ensure_folder, file_of, make_storage, safe_url
from retfound_hpo.search.strategy import make_pruner, make_sampler

log = logging.getLogger(__name__)


def kept_name(study_name: str, fingerprint_key: str) -> str:
    """The name a study is kept under once the inputs change: `<name>@<fingerprint id>`."""
    return f"{study_name}@{fingerprint_key}"


def free_name(names: list[str], wanted: str) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`, ... where a study of that name is kept already."""
    name, n = wanted, 1
    while name in names:
        n += 1
        name = f"{wanted}-{n}"
    return name


def move_study(storage: optuna.storages.BaseStorage, source: str, target: str) -> None:
    """Rename a study within its storage (Optuna has no rename: copy, then delete). `target`
    must be free: nothing is ever deleted but the source, once copied."""
    optuna.copy_study(
        from_study_name=source, from_storage=storage, to_storage=storage, to_study_name=target
    )
    optuna.delete_study(study_name=source, storage=storage)


def keep_aside(storage: optuna.storages.BaseStorage, study: optuna.Study) -> str | None:
    """Move `study` out of the way under `<name>@<its fingerprint id>` (a snapshot of another
    storage: `...-snapshot`), at a free name; a study without trials is deleted instead (it
    holds nothing to keep). Returns the new name, None when deleted."""
    name = study.study_name
    if not study.get_trials(deepcopy=False):
        optuna.delete_study(study_name=name, storage=storage)
        return None
    base = kept_name(name, study.user_attrs.get("fingerprint_id", "unfingerprinted"))
    if "snapshot_of" in study.user_attrs:
        base += "-snapshot"
    target = free_name(optuna.get_all_study_names(storage), base)
    move_study(storage, name, target)
    return target


def _switch_inputs(
    hpo: HpoConfig, storage: optuna.storages.BaseStorage, fingerprint: dict[str, Any]
) -> None:
    """Make `hpo.study_name` the study of these inputs: keep a study of other inputs (or a
    snapshot of another storage) aside, and bring back a kept study of these inputs."""
    name, url = hpo.study_name, safe_url(hpo.storage_url)
    wanted = kept_name(name, fingerprint_id(fingerprint))
    if name in optuna.get_all_study_names(storage):
        current = optuna.load_study(study_name=name, storage=storage)
        old = current.user_attrs.get("fingerprint")
        snapshot = current.user_attrs.get("snapshot_of")
        if old == fingerprint and snapshot is None:
            return
        n_trials = len(current.get_trials(deepcopy=False))
        kept = keep_aside(storage, current)
        if kept is not None:
            why = (
                f"is a copy of the study in {snapshot}"
                if snapshot is not None
                else f"was run on other inputs ({describe_changes(old, fingerprint)})"
            )
            log.warning(
                "study %s in %s %s: its %d trial(s) are kept as study %r in the same storage "
                "and are not reused",
                name,
                url,
                why,
                n_trials,
                kept,
            )
    if wanted in optuna.get_all_study_names(storage):
        move_study(storage, wanted, name)
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
    ensure_folder(hpo.study_dir, "hpo.output_dir")
    storage = make_storage(hpo, create=create)
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


def discard_if_empty(study: optuna.Study, hpo: HpoConfig, storage_existed: bool) -> None:
    """After a failure before any trial ran: leave no empty study behind, nor a storage file
    that this run created for nothing."""
    try:
        if study.get_trials(deepcopy=False):
            return
        optuna.delete_study(study_name=study.study_name, storage=study._storage)
        path = file_of(hpo.storage_url)
        if path is None or storage_existed or optuna.get_all_study_names(study._storage):
            return
        backend = getattr(study._storage, "_backend", study._storage)  # Optuna's cache wraps it
        if isinstance(backend, optuna.storages.RDBStorage):
            backend.engine.dispose()
        for suffix in ("", ".lock", ".slots.lock"):  # journal lock / slot lock beside it
            path.with_name((path.stem if suffix == ".slots.lock" else path.name) + suffix).unlink(
                missing_ok=True
            )
        shutil.rmtree(path.with_name(path.name + ".leases"), ignore_errors=True)
    except Exception as err:  # never hide the failure that brought us here
        log.warning("could not remove the empty study %s: %s", study.study_name, err)
