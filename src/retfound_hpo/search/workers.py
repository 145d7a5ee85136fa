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
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.params import Params
from retfound_hpo.core.params_yaml import dump_params, load_params
from retfound_hpo.core.system import usable_cpus
from retfound_hpo.search.budget import SearchStopped, StopOnSetupFailure, budget, to_run
from retfound_hpo.search.fingerprint import study_fingerprint
from retfound_hpo.search.liveness import fail_dead_trials
from retfound_hpo.search.objective import make_objective
from retfound_hpo.search.preflight import run_preflight
from retfound_hpo.search.slots import SlotLock
from retfound_hpo.search.study import enqueue_known_good, open_study
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
    hpo.timeout_hours passes. Returns True when stopped by Ctrl-C (the trial is recorded FAIL).
    Raises SearchStopped when trials fail the way every trial would."""
    hpo = params.hpo
    study = open_study(hpo, params.seed, fingerprint, worker_index, create=False)
    objective = make_objective(
        params.model, params.train, hpo, params.wandb, params.seed, train, val
    )
    stop_on_setup_failure = StopOnSetupFailure()
    deadline = time.monotonic() + hpo.timeout_hours * 3600 if hpo.timeout_hours else None
    slots = SlotLock(hpo.storage_url, hpo.study_name)
    poll = min(hpo.heartbeat_seconds, 5)

    def run_then_release(trial: optuna.Trial):
        slots.release()  # the trial exists now: other workers may count it and go on
        return objective(trial)

    try:
        while deadline is None or time.monotonic() < deadline:
            slots.acquire()
            try:
                fail_dead_trials(study, hpo.heartbeat_seconds)
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
                    "retfound_hpo.search.workers",
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
    fingerprint = study_fingerprint(params.model, params.train, hpo, params.seed, train, val)
    study = open_study(hpo, params.seed, fingerprint)
    enqueue_known_good(study, hpo, budget(study).counted)
    left = to_run(study, hpo.n_trials)
    log.info(
        "study %s: %d finished trial(s), %d to run, %d worker(s) here",
        hpo.study_name,
        budget(study).finished,
        left,
        hpo.n_workers,
    )
    if left == 0:
        return study, False
    run_preflight(params.model, params.train, hpo, params.seed, train, val)
    if hpo.n_workers == 1:
        interrupted = run_worker(params, train, val, fingerprint)
    else:
        interrupted = run_local_workers(params)
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
    args = parser.parse_args(argv)

    def work() -> None:
        import torch

        if threads := os.environ.get("RETFOUND_HPO_THREADS"):
            torch.set_num_threads(int(threads))
        params = load_params(args.params)
        prepared = Path(params.data.prepared_dir)
        train, val = load_cached(prepared / "train"), load_cached(prepared / "val")  # never test
        fingerprint = study_fingerprint(
            params.model, params.train, params.hpo, params.seed, train, val
        )
        # The study must exist and match this worker's inputs.
        study = open_study(params.hpo, params.seed, fingerprint, args.index, create=False)
        if not args.spawned and to_run(study, params.hpo.n_trials):
            # this machine's device, data and checkpoint
            run_preflight(params.model, params.train, params.hpo, params.seed, train, val)
        if run_worker(params, train, val, fingerprint, args.index):
            sys.exit(130)

    run_stage(work, prefix=f"worker {args.index}")


if __name__ == "__main__":
    main()
