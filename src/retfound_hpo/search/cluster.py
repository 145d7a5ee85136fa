"""hpo.launcher slurm: the search as one SLURM job array of retfound-worker tasks.

The hpo-search stage stays on the submitting node (no DVC on a compute node). It has created
the study already; here it checks the job with `sbatch --test-only` (a missing partition or an
impossible request is one line before anything runs), submits hpo.slurm.tasks tasks, and waits,
showing tasks pending / running / done and trials finished of hpo.n_trials. A task that ends
mid-trial (scancel, preemption, its time limit, a lost node) has its trial failed at once and
not counted; the other tasks, or the same task once requeued, run one in its place. An array
that ends with the budget unfinished (all tasks cancelled, or every task stopped on an error)
stops the stage with one line; the study stays, and a rerun submits a new array that resumes it.

Each submission gets a folder `<study dir>/slurm/<time>/` (ignored by git): the batch script,
the params the tasks read (removed once the array ends), one log and one status file per task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import optuna
from tqdm import tqdm

from retfound_hpo.core.params import HpoConfig
from retfound_hpo.search import slurm
from retfound_hpo.search.budget import SearchStopped, budget, to_run
from retfound_hpo.search.liveness import fail_dead_trials, fail_trials_of_ended_tasks

log = logging.getLogger(__name__)

KEEP_RUNS = 5  # submission folders kept per study (their logs), newest first


def new_run_dir(study_dir: Path) -> Path:
    """A fresh folder for one submission's files; the oldest beyond KEEP_RUNS are removed."""
    root = study_dir / "slurm"
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("*\n")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / stamp
    n = 1
    while run.exists():
        n += 1
        run = root / f"{stamp}-{n}"
    run.mkdir()
    for old in sorted(p for p in root.iterdir() if p.is_dir())[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return run


def status_path(run_dir: Path, index: int) -> Path:
    """Where array task `index` writes how it ended (see workers.main)."""
    return run_dir / f"task_{index}.json"


def read_status(run_dir: Path, index: int) -> dict | None:
    try:
        return json.loads(status_path(run_dir, index).read_text())
    except (OSError, ValueError):
        return None


def _states(job: str, run_dir: Path, tasks: int) -> dict[int, tuple[str, str]]:
    """Each task's state: squeue's, or once SLURM forgot the job, its status file's."""
    states = slurm.task_states(job)
    if states is not None:
        return states
    out = {}
    for i in range(tasks):
        status = read_status(run_dir, i)
        final = "LOST" if status is None else "COMPLETED" if status["exit"] == 0 else "FAILED"
        out[i] = (final, "")
    return out


def _summary(states: dict[int, tuple[str, str]]) -> str:
    waiting = [r for s, r in states.values() if s in slurm.WAITING]
    running = sum(s in slurm.ACTIVE for s, _ in states.values())
    reasons = sorted({r for r in waiting if r and r != "None"})  # e.g. Resources, Priority
    why = f" ({', '.join(reasons)})" if reasons else ""
    done = len(states) - len(waiting) - running
    return f"tasks {len(waiting)} pending{why}, {running} running, {done} done"


def wait_for_array(
    job: str, hpo: HpoConfig, study: optuna.Study, run_dir: Path
) -> dict[int, tuple[str, str]]:
    """Poll until every task has ended, failing the trials of tasks that end mid-trial;
    progress as a bar on a terminal, else a log line whenever it changes."""
    poll = min(hpo.heartbeat_seconds, 5)
    last = ""
    with tqdm(total=hpo.n_trials, desc=f"slurm job {job}", unit="trial", disable=None) as bar:
        while True:
            states = _states(job, run_dir, hpo.slurm.tasks)
            gone = {f"{job}_{i}": s for i, (s, _) in states.items() if slurm.ended(s)}
            fail_trials_of_ended_tasks(study, gone)
            left = budget(study)
            line = f"{_summary(states)}; trials {left.finished} of {hpo.n_trials} finished"
            bar.n = min(left.finished, hpo.n_trials)
            bar.set_postfix_str(_summary(states), refresh=True)
            if bar.disable and line != last:
                log.info("slurm job %s: %s", job, line)
            last = line
            if len(gone) == len(states):
                return states
            time.sleep(poll)


def _verdict(
    job: str, states: dict[int, tuple[str, str]], hpo: HpoConfig, study: optuna.Study, run: Path
) -> None:
    """After the array: fine if every task completed or the budget is done; else one line."""
    fail_dead_trials(study, hpo.heartbeat_seconds)
    left, running = to_run(study, hpo.n_trials), budget(study).running
    unwell = {i: s for i, (s, _) in sorted(states.items()) if s != "COMPLETED"}
    if not unwell:
        return
    if left == 0 and running == 0:
        log.warning("slurm job %s: task(s) %s ended early; the others ran the budget", job, unwell)
        return
    for i in unwell:
        status = read_status(run, i)
        if status and status["exit"] == 2:  # a one-line error, the same in every task usually
            raise SearchStopped(f"slurm job {job}: task {i} stopped: {status['error']}")
    ends = ", ".join(f"{i} {s}" for i, s in unwell.items())
    raise SearchStopped(
        f"slurm job {job} ended with {left} of {hpo.n_trials} trial(s) still to run (tasks "
        f"{ends}); the study is kept: rerun dvc repro to resume it (task logs: {run})"
    )


def run_array(hpo: HpoConfig, worker: list[str], run_dir: Path, study: optuna.Study) -> bool:
    """Submit the worker array (each task runs `worker --index <task>`), wait for it and check
    how it ended. Returns True when interrupted: Ctrl-C (or any failure here) cancels the
    array, which nobody would wait for."""
    script = run_dir / "job.sh"
    name = f"retfound-hpo-{hpo.study_name}"
    script.write_text(slurm.batch_script(hpo.slurm, name, run_dir, Path.cwd().resolve(), worker))
    slurm.check_job(script)
    job = slurm.submit(script)
    log.info(
        "submitted slurm job %s: %d task(s) of retfound-worker; watch it with squeue -j %s "
        "(logs: %s)",
        job,
        hpo.slurm.tasks,
        job,
        run_dir,
    )
    try:
        states = wait_for_array(job, hpo, study, run_dir)
    except BaseException as err:
        with contextlib.suppress(Exception):
            slurm.cancel(job)  # nobody is left to wait for it
        if not isinstance(err, KeyboardInterrupt):
            raise
        print(f"\ncancelling slurm job {job} ...", file=sys.stderr)
        _wait_quietly(job, deadline=time.monotonic() + 60)
        return True
    finally:  # no task reads it any more, and it may hold a password
        (run_dir / "params.yaml").unlink(missing_ok=True)
    _verdict(job, states, hpo, study, run_dir)
    return False


def _wait_quietly(job: str, deadline: float) -> None:
    """Until the cancelled tasks are gone (their trials failed by their SIGTERM handlers)."""
    while time.monotonic() < deadline:
        states = slurm.task_states(job)
        if states is None or all(slurm.ended(s) for s, _ in states.values()):
            return
        time.sleep(0.5)
