"""Run the real hpo-search stage in a scratch folder, for the benchmarks that time or weigh it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def demo_params(**hpo) -> dict:
    """The repository's params.yaml, its paths made absolute, with `hpo` overrides. The
    prepared data are the repository's, or a copy named by RETFOUND_BENCH_PREPARED (so that a
    long benchmark does not see them change under it)."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    prepared = os.environ.get("RETFOUND_BENCH_PREPARED", REPO / params["data"]["prepared_dir"])
    params["data"]["prepared_dir"] = str(prepared)
    params["model"]["checkpoint"] = str(REPO / params["model"]["checkpoint"])
    params["hpo"].update(output_dir="optuna", **hpo)
    return params


def run_hpo_search(workdir: Path, params: dict) -> tuple[float, float]:
    """Run hpo-search with `params` in `workdir`; return (its peak RSS in MiB, seconds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # The prepared data are prepare-split's output, which must lie inside the project (the run
    # folder): a link to the repository's (or the named copy) stands in for them.
    params = copy.deepcopy(params)
    link = workdir / "data" / "prepared"
    if Path(params["data"]["prepared_dir"]).is_absolute():
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(params["data"]["prepared_dir"], target_is_directory=True)
        params["data"]["prepared_dir"] = "data/prepared"
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(workdir / "stage.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "stages/hpo_search.py")],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    if status != 0:
        tail = (workdir / "stage.log").read_text()[-2000:]
        raise SystemExit(f"hpo-search failed in {workdir}:\n{tail}")
    return usage.ru_maxrss / 1024, seconds  # KiB on Linux


def trials(workdir: Path, params: dict) -> pd.DataFrame:
    return pd.read_csv(workdir / "optuna" / params["hpo"]["study_name"] / "trials.csv")
