"""Search workers: one or more processes, on this host or others, sharing one Optuna study.

Each worker runs trials one at a time. Before a trial it takes the study's slot lock, counts the
trials, and lets Optuna create the next one only while fewer than hpo.n_trials exist; the lock
is let go as soon as the trial exists. So the workers together start exactly hpo.n_trials
trials, however many there are and whenever they join. A worker that is interrupted (Ctrl-C,
SIGTERM from a scheduler) records its trial FAIL; one that dies stops sending heartbeats, and
after two heartbeat intervals its trial is failed by whichever worker looks next. Either way
the trial is not counted, so someone runs one in its place (with hpo.retry_failed_trials, the
same parameters again).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import ConfigError, UserError
from retfound_hpo.core.files import write_json_atomic
from retfound_hpo.core.params import Params
from retfound_hpo.core.params_yaml import dump_params, load_params
from retfound_hpo.search.budget import StopOnSetupFailure, budget, mark_uncounted, to_run
from retfound_hpo.search.cluster import new_run_dir, run_array, status_path
from retfound_hpo.search.fingerprint import study_fingerprint
from retfound_hpo.search.interrupts import (
    acknowledge,
    interrupted_reason,
    slurm_task,
    terminate,
)
from retfound_hpo.search.liveness import fail_dead_trials, optimize_one
from retfound_hpo.search.local import run_local_workers
from retfound_hpo.search.objective import make_objective
from retfound_hpo.search.preflight import run_preflight
from retfound_hpo.search.slots import SlotLock
from retfound_hpo.search.storage import file_of
from retfound_hpo.search.study import discard_if_empty, enqueue_known_good, open_study
from retfound_hpo.search.study_files import check_snapshot
from retfound_hpo.training.inputs import CachedImages, load_cached

log = logging.getLogger(__name__)


def run_worker(
    params: Params,
    train: CachedImages,
    val: CachedImages,
    fingerprint: dict,
    worker_index: int = 0,
) -> bool:
    """Run trials until the study holds hpo.n_trials of them and none is still running, or
    hpo.timeout_hours passes. Returns True when interrupted (the trial is recorded FAIL and
    not counted). Raises SearchStopped when trials fail the way every trial would."""
    hpo = params.hpo
    study = open_study(hpo, params.seed, fingerprint, worker_index, create=False)
    objective = make_objective(
        params.model, params.train, hpo, params.wandb, params.seed, train, val
    )
    stop_on_setup_failure = StopOnSetupFailure()
    deadline = time.monotonic() + hpo.timeout_hours * 3600 if hpo.timeout_hours else None
    slots = SlotLock(hpo.storage_url, hpo.study_name)
    poll = min(hpo.heartbeat_seconds, 5)
    task = slurm_task()

    def run_then_release(trial: optuna.Trial):
        slots.release()  # the trial exists now: other workers may count it and go on
        if task:  # the stage fails it at once if the task ends (cluster.py)
            trial.set_user_attr("slurm_task", task)
        try:
            return objective(trial)
        except KeyboardInterrupt as err:
            acknowledge()
            reason = interrupted_reason(err)
            try:
                trial.set_user_attr("fail_reason", reason)
                mark_uncounted(trial.study, trial.number, reason)
            except Exception as mark_err:  # the storage may be what was interrupted
                log.warning("trial %d: not marked as interrupted (%s)", trial.number, mark_err)
            raise

    try:
        while deadline is None or time.monotonic() < deadline:
            slots.acquire()
            try:
                fail_dead_trials(study, hpo.heartbeat_seconds)
                left = budget(study)
                if left.waiting or left.counted < hpo.n_trials:
                    optimize_one(study, run_then_release, stop_on_setup_failure, worker_index)
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
        acknowledge()
        log.warning("worker %d interrupted: its trial is recorded FAIL, not counted", worker_index)
        return True
    finally:
        slots.close()


@contextmanager
def _params_file(params: Params, folder: Path):
    """The exact params the stage validated, for the worker processes to read (readable by
    the owner alone: hpo.storage may hold a password)."""
    path = folder / f".worker_params.{os.getpid()}.yaml"
    dump_params(params, path)
    path.chmod(0o600)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _run_workers(params: Params, train, val, fingerprint: dict, study: optuna.Study) -> bool:
    """hpo.launcher: a SLURM array, local worker processes, or this process."""
    hpo = params.hpo
    if hpo.launcher == "slurm":  # each task runs the preflight on its own node
        run_dir = new_run_dir(hpo.study_dir)
        params_file = run_dir / "params.yaml"
        dump_params(params, params_file)
        params_file.chmod(0o600)
        worker = [sys.executable, "-m", "retfound_hpo.search.workers", "--params"]
        worker += [str(params_file.resolve()), "--status-dir", str(run_dir.resolve())]
        return run_array(hpo, worker, run_dir, study)
    run_preflight(params.model, params.train, hpo, params.seed, train, val)
    if hpo.n_workers == 1:
        return run_worker(params, train, val, fingerprint)
    with _params_file(params, hpo.study_dir) as path:
        return run_local_workers(path, hpo.n_workers)


def run_search(params: Params, train: CachedImages, val: CachedImages) -> tuple[optuna.Study, bool]:
    """Run trials until the study holds hpo.n_trials finished ones or the timeout passes.

    The study (and its database) is created here, once, before any worker starts: a new
    database races on table creation. Trials cut off by a kill or a lost node are failed (and
    not counted) before the budget is counted. The preflight runs before any trial, here or,
    with SLURM, in each task. Returns (study, interrupted).
    """
    hpo = params.hpo
    fingerprint = study_fingerprint(params.model, params.train, hpo, params.seed, train, val)
    check_snapshot(hpo)
    path = file_of(hpo.storage_url)
    existed = path is None or path.exists()
    study = open_study(hpo, params.seed, fingerprint)
    try:
        slots = SlotLock(hpo.storage_url, hpo.study_name)
        slots.acquire()
        try:
            fail_dead_trials(study, hpo.heartbeat_seconds)
            enqueue_known_good(study, hpo, budget(study).counted)
            left = to_run(study, hpo.n_trials)
        finally:
            slots.close()
        slurm = hpo.launcher == "slurm"
        where = f"as a SLURM array of {hpo.slurm.tasks}" if slurm else f"{hpo.n_workers} here"
        log.info(
            "study %s: %d finished trial(s), %d to run, worker(s): %s",
            hpo.study_name,
            budget(study).finished,
            left,
            where,
        )
        if left == 0:
            return study, False
        interrupted = _run_workers(params, train, val, fingerprint, study)
    except BaseException:
        discard_if_empty(study, hpo, existed)
        raise
    return open_study(hpo, params.seed, fingerprint), interrupted


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
    # An array task of hpo.launcher slurm: how it ended goes to <dir>/task_<index>.json.
    parser.add_argument("--status-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    status = {"exit": 0, "error": None, "interrupted": None}
    status.update(host=socket.gethostname(), pid=os.getpid())
    previous = signal.signal(signal.SIGTERM, terminate)

    def work() -> None:
        try:
            _work(args)
        except UserError as err:
            status["error"] = str(err)
            raise
        except KeyboardInterrupt as err:
            acknowledge()
            status["interrupted"] = reason = interrupted_reason(err)
            if not args.spawned:  # the main run says it once for all its workers
                print(f"worker {args.index}: {reason}; its trial is recorded FAIL and not "
                      "counted", file=sys.stderr)  # fmt: skip
            sys.exit(130)

    try:
        run_stage(work, prefix=f"worker {args.index}")
    except SystemExit as end:
        status["exit"] = end.code if isinstance(end.code, int) else 1
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.status_dir:
            write_json_atomic(status_path(Path(args.status_dir), args.index), status)


def _work(args: argparse.Namespace) -> None:
    import torch

    if threads := os.environ.get("RETFOUND_HPO_THREADS"):
        torch.set_num_threads(int(threads))
    if not Path(args.params).is_file():
        what = "is a folder" if Path(args.params).is_dir() else "does not exist"
        raise ConfigError(
            f"--params {args.params}: {what}; give the params.yaml file the search was started with"
        )
    # A spawned worker (or array task) reads the copy of params that its stage checked, from
    # the study's folder: its folders were checked against the project, not that folder.
    launched = args.spawned or args.status_dir is not None
    params = load_params(args.params, check_folders=not launched)
    prepared = Path(params.data.prepared_dir)
    train, val = load_cached(prepared / "train"), load_cached(prepared / "val")  # never test
    fingerprint = study_fingerprint(params.model, params.train, params.hpo, params.seed, train, val)
    # The study must exist and match this worker's inputs.
    study = open_study(params.hpo, params.seed, fingerprint, args.index, create=False)
    if not args.spawned and to_run(study, params.hpo.n_trials):
        # this machine's device, data and checkpoint
        run_preflight(params.model, params.train, params.hpo, params.seed, train, val)
    if run_worker(params, train, val, fingerprint, args.index):
        raise KeyboardInterrupt


if __name__ == "__main__":
    main()
