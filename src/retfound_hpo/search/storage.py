"""Where a study lives, and how a worker that is gone is noticed there.

`hpo.storage` picks one of three Optuna storages: null or `sqlite:///<path>` (one machine),
`postgresql://user@host/db` (psycopg 3; `postgresql+psycopg2://` too) or `journal:///<path>`
(Optuna's JournalFileBackend: an append-only file that works on network file systems, where
SQLite locks up). A failure to open one is one line naming its URL, password hidden.

A dead worker's trial is found the same way on all three: each running trial sends a heartbeat
every hpo.heartbeat_seconds, and one silent for two intervals is failed. RDB storages have
Optuna's heartbeats; the journal has none in Optuna, so here each running trial touches a lease
file beside the journal (`<journal>.leases/<trial id>`) and a lease older than two intervals
is stale. Either way the trial is not counted toward hpo.n_trials, and with
hpo.retry_failed_trials it is queued again with the same parameters.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import HpoConfig
from retfound_hpo.search.budget import mark_uncounted

HEARTBEAT_LOST = "worker stopped sending heartbeats (killed or crashed)"


def file_of(url: str) -> Path | None:
    """The file of a SQLite or journal URL (relative paths are the project's); None for
    PostgreSQL."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme):
            return Path(url.removeprefix(scheme))
    return None


def safe_url(url: str) -> str:
    """A storage URL fit for logs and config.json: no password."""
    if file_of(url) is not None:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.split("://")[0] + "://***"


class DeadTrialCallback:
    """For each trial failed because its worker is gone: not counted; queued again with the
    same parameters while hpo.retry_failed_trials allows."""

    def __init__(self, retries: int):
        self._retry = (
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries) if retries else None
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        mark_uncounted(study, trial.number, trial.user_attrs.get("fail_reason") or HEARTBEAT_LOST)
        if self._retry is not None:
            self._retry(study, trial)


class LeasedJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats: a lease file per running trial."""

    def __init__(self, path: Path, heartbeat_seconds: int, callback: DeadTrialCallback):
        super().__init__(JournalFileBackend(str(path)))
        self._leases = path.with_name(path.name + ".leases")
        self._interval = heartbeat_seconds
        self._callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        self._leases.mkdir(exist_ok=True)
        (self._leases / str(trial_id)).touch()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        now, stale = time.time(), []
        for trial in running:
            try:
                last = (self._leases / str(trial._trial_id)).stat().st_mtime
            except FileNotFoundError:  # no heartbeat yet: count from the trial's start
                last = trial.datetime_start.timestamp()
            if now - last > 2 * self._interval:
                stale.append(trial._trial_id)
        alive = {str(t._trial_id) for t in running} - {str(i) for i in stale}
        if self._leases.is_dir():  # finished trials' leases are of no more use
            for lease in self._leases.iterdir():
                if lease.name not in alive:
                    lease.unlink(missing_ok=True)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> DeadTrialCallback:
        return self._callback


def _reason(err: BaseException) -> str:
    """The driver's own words, first line only (never the URL: it may hold a password)."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return " ".join(text.split())


def _missing(hpo: HpoConfig, path: Path) -> ConfigError:
    return ConfigError(
        f"hpo.study_name: no study {hpo.study_name!r} in {safe_url(hpo.storage_url)} (no such "
        f"file {path}); start the search on the main machine first (dvc repro hpo-search)"
    )


def ensure_folder(folder: Path, key: str) -> None:
    """Create `folder` (and its parents), or stop in one line naming the params key."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}: cannot create folder {folder} ({err.strerror or err})") from None


def make_storage(hpo: HpoConfig, create: bool = True) -> BaseStorage:
    """The study's storage, with heartbeats. Without `create` (a worker joining) a storage
    file that does not exist is an error, not a new empty file."""
    url, path = hpo.storage_url, file_of(hpo.storage_url)
    callback = DeadTrialCallback(hpo.retry_failed_trials)
    key = "hpo.storage" if hpo.storage else "hpo.output_dir"
    try:
        if path is not None and not create and not path.is_file():
            raise _missing(hpo, path)
        if path is not None:
            ensure_folder(path.parent, key)
        if url.startswith("journal:///"):
            return LeasedJournalStorage(path, hpo.heartbeat_seconds, callback)
        # SQLite: workers on one host take turns writing; wait for the lock, not 5 s.
        # PostgreSQL: an unreachable host is an error in seconds, not minutes.
        connect = {"timeout": 120} if path is not None else {"connect_timeout": 10}
        with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect},
                heartbeat_interval=hpo.heartbeat_seconds,
                heartbeat_stale_trial_callback=callback,
            )
    except ConfigError:
        raise
    except (sqlalchemy.exc.SQLAlchemyError, OSError, RuntimeError, ValueError) as err:
        what = "is not an Optuna storage" if path is not None else "cannot be reached"
        raise ConfigError(f"{key}: {safe_url(url)} {what} ({_reason(err)})") from None
