"""SLURM from Python: a worker array's batch script, `sbatch`, `squeue` and `scancel`.

Plain `sbatch --array --parsable` and `squeue`, not submitit: submitit reads job states only
from sacct, so on a cluster without accounting a cancelled task's result() waits forever, and
it ships pickled functions that need the submitting interpreter and a shared folder; our
tasks are a console command (retfound-worker) whose results already go to the Optuna storage.
Task states come from `squeue -t all` (finished tasks stay listed for MinJobAge, 300 s by
default) and from a status file each task writes when it ends (cluster.py).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from retfound_hpo.core.errors import ConfigError, UserError
from retfound_hpo.core.params import SlurmConfig

# squeue's states (%T) by what they mean for a task; any other state is final.
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
ACTIVE = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}


class SlurmError(UserError):
    """The scheduler refused or could not be asked; the message says what it answered."""


def ended(state: str) -> bool:
    return state not in WAITING and state not in ACTIVE


def batch_script(
    slurm: SlurmConfig, job_name: str, run_dir: Path, workdir: Path, worker: list[str]
) -> str:
    """The sbatch script: one array task per worker, each running `worker` plus
    `--index <its task index>`."""
    array = f"0-{slurm.tasks - 1}" + (f"%{slurm.max_running}" if slurm.max_running else "")
    options = [
        f"--job-name={job_name}",
        f"--array={array}",
        f"--chdir={workdir}",
        f"--output={run_dir}/task_%a.log",
        "--open-mode=append",  # a requeued task appends to its log
        "--requeue",  # a preempted task or a failed node's comes back and rejoins the study
        f"--time={slurm.time}",
        "--ntasks=1",
        f"--cpus-per-task={slurm.cpus_per_task}",
    ]
    optional = {
        "--partition": slurm.partition,
        "--gres": f"gpu:{slurm.gpus_per_task}" if slurm.gpus_per_task else None,
        "--mem": slurm.memory,
        "--account": slurm.account,
    }
    options += [f"{key}={value}" for key, value in optional.items() if value is not None]
    options += list(slurm.extra)
    command = f'{shlex.join(worker)} --index "$SLURM_ARRAY_TASK_ID"'
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {option}" for option in options),
        "# hpo.slurm.setup",
        *slurm.setup,
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        'export RETFOUND_HPO_THREADS="$OMP_NUM_THREADS" TQDM_DISABLE=1',
        f"exec {command}",  # the worker itself gets SLURM's SIGTERM
    ]
    return "\n".join(lines) + "\n"


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(
            f"hpo.launcher: 'slurm' needs SLURM's {args[0]} here, and there is none on PATH; "
            "run the stage where you submit SLURM jobs, or use hpo.launcher: local"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"{args[0]} gave no answer in {timeout:.0f} s (is slurmctld up?)"
        ) from None


def _errors(stderr: str) -> str:
    """sbatch's error lines, in one."""
    lines = [line.split("error:", 1)[-1].strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(line for line in lines if line)) or "no reason given"


def check_job(script: Path) -> None:
    """`sbatch --test-only`: a missing partition, an unknown GPU type or more memory than a
    node has is refused here, in one line, before anything runs."""
    proc = _run(["sbatch", "--test-only", str(script)])
    if proc.returncode != 0:
        raise ConfigError(f"hpo.slurm: sbatch refuses the job: {_errors(proc.stderr)}")


def submit(script: Path) -> str:
    """Submit the array; its job id."""
    proc = _run(["sbatch", "--parsable", str(script)])
    if proc.returncode != 0:
        raise ConfigError(f"hpo.slurm: sbatch refuses the job: {_errors(proc.stderr)}")
    return proc.stdout.strip().split(";")[0]


def task_states(job_id: str) -> dict[int, tuple[str, str]] | None:
    """Each array task's state and reason (`squeue -t all`); None once SLURM no longer knows
    the job (MinJobAge after its end)."""
    proc = _run(["squeue", "-h", "-t", "all", "-r", "-j", job_id, "-o", "%K %T %r"])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise SlurmError(f"squeue -j {job_id}: {_errors(proc.stderr)}")
    states = {}
    for line in proc.stdout.splitlines():
        index, state, reason = (line.split(maxsplit=2) + ["", ""])[:3]
        if index.isdigit():
            states[int(index)] = (state, reason)
    return states or None


def cancel(job_id: str) -> None:
    """scancel the whole array: running tasks get SIGTERM (their trials are failed, not
    counted), pending ones never start."""
    _run(["scancel", job_id])
