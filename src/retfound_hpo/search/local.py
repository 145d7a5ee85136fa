"""hpo.launcher local with hpo.n_workers > 1: worker processes on this machine, one GPU each or a
share of the CPU cores, started by the stage and waited for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from retfound_hpo.core.system import usable_cpus
from retfound_hpo.search.budget import SearchStopped

log = logging.getLogger(__name__)


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


def run_local_workers(params_file: Path, n: int) -> bool:
    """Start `n` worker processes on this host, each reading `params_file`, and wait for them
    all. Returns True when interrupted. A worker that dies does not stop the others."""
    gpus = visible_gpus()
    if gpus and n > len(gpus):
        log.warning("%d workers share %d GPU(s): trials will compete for memory", n, len(gpus))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retfound_hpo.search.workers",
                "--params",
                str(params_file),
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
