"""Trials whose worker is gone: found (same host at once, others by heartbeat, a SLURM task's
end at once) and failed; they are not counted toward hpo.n_trials (storage.DeadTrialCallback)."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def fail_dead_trials(study: optuna.Study, heartbeat_seconds: int) -> None:
    """Fail running trials whose worker is gone, and queue them again if retries are on.

    Found three ways: a worker on this host whose process has exited (at once, with that
    reason); a trial that never reached its objective, started two heartbeat intervals ago (a
    crash in between); no heartbeat for two intervals (Optuna's check, for any host).
    """
    grace = timedelta(seconds=2 * heartbeat_seconds)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            if datetime.now() - trial.datetime_start > grace:
                fail_trial(study, trial, "interrupted")
            continue
        name, _, pid = worker.rpartition(":")
        if name == host and not process_alive(int(pid)):
            fail_trial(study, trial, f"worker {worker} died (killed or crashed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_trials_of_ended_tasks(study: optuna.Study, ended: dict[str, str]) -> None:
    """Fail the running trials of SLURM array tasks that have ended (`ended`: task id such as
    "123_0" -> its final state), at once rather than after two heartbeat intervals."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        task = trial.user_attrs.get("slurm_task")
        if task in ended:
            fail_trial(study, trial, f"slurm task {task} ended ({ended[task]}) during the trial")


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Fail a running trial whose worker is gone, with `reason`; not counted, maybe retried."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # finished or failed by another worker meanwhile
    log.warning("trial %d: %s; marked FAIL", trial.number, reason)
    on_dead = storage.get_heartbeat_stale_trial_callback()  # as for heartbeats: uncounted, retry
    if on_dead is not None:
        on_dead(study, storage.get_trial(trial._trial_id))


def optimize_one(study: optuna.Study, objective, callback, worker_index: int) -> None:
    """One trial. If another worker failed it meanwhile (its heartbeat came too late, e.g. on
    an overloaded machine), Optuna cannot record its end: that trial is lost, not the worker."""
    try:
        # gc_after_trial off: the objective frees the trial's memory itself, where it matters
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[callback])
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
        if not isinstance(err, optuna.exceptions.UpdateFinishedTrialError) and (
            "Cannot tell a" not in str(err)
        ):
            raise
        log.warning(
            "worker %d: its trial was failed by another worker while it ran (no heartbeat for "
            "two intervals: raise hpo.heartbeat_seconds on a busy machine); it is not counted",
            worker_index,
        )
