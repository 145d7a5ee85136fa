"""Search workers: one or more processes, on this host or others, sharing one Optuna study.

Each worker runs trials one at a time. Before a trial it takes the study's slot lock, counts the
trials, and lets Optuna create the next one only while fewer than hpo.n_trials exist; the lock
is let go as soon as the trial exists. So the workers together start exactly hpo.n_trials
trials, however many there are and whenever they join. A worker that dies stops sending
heartbeats: after two heartbeat intervals its trial is failed by whichever worker looks next,
and with hpo.retry_failed_trials Optuna queues it again with the same parameters.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
import zlib
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from retfound_hpo.budget import SearchStopped, StopOnSetupFailure, budget, to_run
from retfound_hpo.config import Params, dump_params, load_params
from retfound_hpo.fingerprint import study_fingerprint
from retfound_hpo.preflight import run_preflight
from retfound_hpo.search import make_objective
from retfound_hpo.study import enqueue_known_good, open_study, storage_url
from retfound_hpo.train import CachedImages

log = logging.getLogger(__name__)


class SlotLock:
    """A lock around "count the trials, create the next one", shared by every worker.

    SQLite (one host): an flock on a file beside the database. PostgreSQL (any host): a
    session-level advisory lock. Both are released by the operating system or the server when
    the holder dies, so a killed worker never blocks the others.
    """

    def __init__(self, params: Params):
        url = storage_url(params)
        self._key = zlib.crc32(params.hpo.study_name.encode())  # one lock per study
        self._held = False
        if url.startswith("sqlite"):
            path = Path(url.removeprefix("sqlite:///")).with_suffix(".slots.lock")
            self._file = open(path, "a+")  # noqa: SIM115 - open for the worker's lifetime
            self._conn = None
        else:
            self._file = None
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = engine.connect()

    def acquire(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
        else:
            self._conn.close()


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


def fail_dead_trials(study: optuna.Study, params: Params) -> None:
    """Fail running trials whose worker is gone, and queue them again if retries are on.

    Found three ways: a worker on this host whose process has exited (at once, with that
    reason); a trial that never reached its objective, started two heartbeat intervals ago (a
    crash in between); no heartbeat for two intervals (Optuna's check, for any host).
    """
    grace = timedelta(seconds=2 * params.hpo.heartbeat_seconds)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            if datetime.now() - trial.datetime_start > grace:
                _fail_trial(study, trial, "interrupted")
            continue
        name, _, pid = worker.rpartition(":")
        if name == host and not process_alive(int(pid)):
            _fail_trial(study, trial, f"worker {worker} died (killed or crashed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # finished or failed by another worker meanwhile
    log.warning("trial %d: %s; marked FAIL", trial.number, reason)
    retry = storage.get_heartbeat_stale_trial_callback()  # the same retry as for heartbeats
    if retry is not None:
        retry(study, storage.get_trial(trial._trial_id))


def run_worker(
    params: Params,
    train: CachedImages,
    val: CachedImages,
    fingerprint: dict,
    worker_index: int = 0,
) -> bool:
    """Run trials until the study holds hpo.n_trials of them and none is still running, or
    hpo.timeout_hours passes. Returns True when stopped by Ctrl-C (the trial is recorded FAIL).
    Raises SearchStopped when trials fail the way every trial would."""
    hpo = params.hpo
    study = open_study(params, fingerprint, worker_index, create=False)
    objective = make_objective(params, train, val)
    stop_on_setup_failure = StopOnSetupFailure()
    deadline = time.monotonic() + hpo.timeout_hours * 3600 if hpo.timeout_hours else None
    slots = SlotLock(params)
    poll = min(hpo.heartbeat_seconds, 5)

    def run_then_release(trial: optuna.Trial):
        slots.release()  # the trial exists now: other workers may count it and go on
        return objective(trial)

    try:
        while deadline is None or time.monotonic() < deadline:
            slots.acquire()
            try:
                fail_dead_trials(study, params)
                left = budget(study)
                if left.waiting or left.counted < hpo.n_trials:
                    study.optimize(
                        run_then_release,
                        n_trials=1,
                        catch=(Exception,),
                        gc_after_trial=True,
                        callbacks=[stop_on_setup_failure],
                    )
                    continue
            finally:
                slots.release()
            if left.running == 0:
                return False
            # The budget is spent but trials are still running elsewhere. Wait: if a worker
            # dies, its trial fails (or is queued again) and somebody must be here to see it.
            time.sleep(poll)
        log.info("worker %d: hpo.timeout_hours reached; no new trials", worker_index)
        return False
    except KeyboardInterrupt:
        log.warning("interrupted: the current trial is recorded FAIL")
        return True
    finally:
        slots.close()


def visible_gpus() -> list[str]:
    """GPU ids this process may use, as CUDA_VISIBLE_DEVICES would list them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(index: int, n_workers: int, gpus: list[str], cpus: int) -> dict[str, str]:
    """Worker `index`'s environment: its own GPU where there are enough, else a share of cores."""
    env = dict(os.environ)
    threads = max(1, cpus // n_workers)
    env["OMP_NUM_THREADS"] = str(threads)
    env["RETFOUND_HPO_THREADS"] = str(threads)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if index > 0:
        env["TQDM_DISABLE"] = "1"  # one progress bar on the terminal, not n interleaved
    return env


@contextmanager
def _params_file(params: Params):
    """The exact params the stage validated, for the worker processes to read."""
    path = params.hpo.study_dir / f".worker_params.{os.getpid()}.yaml"
    dump_params(params, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def run_local_workers(params: Params) -> bool:
    """Start hpo.n_workers worker processes on this host and wait for them all.

    Returns True when interrupted. A worker that dies does not stop the others.
    """
    from retfound_hpo.data.preprocess import usable_cpus

    n = params.hpo.n_workers
    gpus = visible_gpus()
    if gpus and n > len(gpus):
        log.warning("%d workers share %d GPU(s): trials will compete for memory", n, len(gpus))
    with _params_file(params) as path:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "retfound_hpo.workers",
                    "--params",
                    str(path),
                    "--index",
                    str(i),
                    "--spawned",
                ],
                env=worker_env(i, n, gpus, usable_cpus()),
            )
            for i in range(n)
        ]
        log.info("started %d workers: pids %s", n, [p.pid for p in procs])
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:  # Ctrl-C at a terminal reaches them too; a plain kill does not
                if p.poll() is None:
                    p.send_signal(2)
            for p in procs:
                p.wait()
            return True
    for i, code in enumerate(codes):
        if code != 0:
            log.warning("worker %d (pid %d) exited with code %d", i, procs[i].pid, code)
    stopped = [i for i, code in enumerate(codes) if code == 2]  # a one-line error, shown above
    if stopped:
        raise SearchStopped(f"worker(s) {stopped} stopped on the error above; fix it and rerun")
    return False


def run_search(params: Params, train: CachedImages, val: CachedImages) -> tuple[optuna.Study, bool]:
    """Run trials until the study holds hpo.n_trials finished ones or the timeout passes.

    The study (and its database) is created here, once, before any worker starts: a new
    database races on table creation. The preflight runs once here too, before any trial.
    Returns (study, interrupted).
    """
    hpo = params.hpo
    fingerprint = study_fingerprint(params, train, val)
    study = open_study(params, fingerprint)
    enqueue_known_good(study, params, budget(study).counted)
    left = to_run(study, params)
    log.info(
        "study %s: %d finished trial(s), %d to run, %d worker(s) here",
        hpo.study_name,
        budget(study).finished,
        left,
        hpo.n_workers,
    )
    if left == 0:
        return study, False
    run_preflight(params, train, val)
    if hpo.n_workers == 1:
        interrupted = run_worker(params, train, val, fingerprint)
    else:
        interrupted = run_local_workers(params)
    return open_study(params, fingerprint), interrupted


def main(argv: list[str] | None = None) -> None:
    """Console command retfound-worker: join a study from any machine and run its trials."""
    parser = argparse.ArgumentParser(
        description="Join the study that params.yaml names (hpo.storage, hpo.study_name) and "
        "run trials until it holds hpo.n_trials. The study must exist: start the search on the "
        "main machine first (dvc repro hpo-search)."
    )
    parser.add_argument("--params", default="params.yaml", help="the same params as the study's")
    parser.add_argument("--index", type=int, default=0, help="worker number (sampler seed, logs)")
    # Started by the main run, which already ran the preflight on this machine.
    parser.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from retfound_hpo.cli import run_stage

    def work() -> None:
        import torch

        from retfound_hpo.train import load_cached

        if threads := os.environ.get("RETFOUND_HPO_THREADS"):
            torch.set_num_threads(int(threads))
        params = load_params(args.params)
        prepared = Path(params.data.prepared_dir)
        train, val = load_cached(prepared / "train"), load_cached(prepared / "val")  # never test
        fingerprint = study_fingerprint(params, train, val)
        study = open_study(params, fingerprint, args.index, create=False)  # exists and matches
        if not args.spawned and to_run(study, params):
            run_preflight(params, train, val)  # this machine's device, data and checkpoint
        if run_worker(params, train, val, fingerprint, args.index):
            sys.exit(130)

    run_stage(work, prefix=f"worker {args.index}")


if __name__ == "__main__":
    main()
