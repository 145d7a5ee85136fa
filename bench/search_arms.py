"""Demo searches that differ only in hpo settings ("arms"), each run once and kept.

An arm is a seed, a trial count and hpo overrides of the demo's params.yaml (the rest, search
space and epochs included, stays the demo's). Each run is the real hpo-search stage in its own
folder under a cache directory, named after its settings, with `arm.json` (what it measured)
beside the study: a benchmark that needs the same arm again (another script, a rerun after an
interruption) reads it instead of searching again.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pandas as pd
from stage_runner import demo_params, run_hpo_search, trials

# The search settings every arm starts from (the demo's before issue 13's benchmarks), stated
# here rather than read from params.yaml, so that a later change of the demo's defaults does not
# change what a kept arm means.
BASE = {
    "sampler": "tpe",
    "sampler_startup_trials": 5,
    "pruner": "median",
    "prune_on": "objective",
    "pruner_startup_trials": 3,
    "pruner_warmup_epochs": 3,
    "enqueue_trials": [],
}


def arm_label(overrides: dict) -> str:
    """'pruner=median,prune_on=loss': the overrides, sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "demo"


def parse_arm(text: str) -> dict:
    """'pruner=median,pruner_warmup_epochs=1' -> {'pruner': 'median', 'pruner_warmup_epochs': 1}"""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def search_inputs(params: dict) -> dict:
    """What hpo-search reads: a change elsewhere in params.yaml leaves a kept run valid."""
    keys = ("seed", "model", "train", "hpo")
    return {**{k: params[k] for k in keys}, "prepared": params["data"]["prepared_dir"]}


def best_after(table: pd.DataFrame, counts: list[int]) -> dict[int, float | None]:
    """The best completed trial's objective among the first k trials, for each k."""
    out = {}
    for k in counts:
        done = table[(table["trial_number"] < k) & (table["state"] == "COMPLETE")]
        out[k] = round(float(done["objective"].max()), 2) if len(done) else None
    return out


def run_arm(cache: Path, seed: int, n_trials: int, overrides: dict, resume: bool = False) -> dict:
    """Run (or read back) one demo search; returns what it measured.

    resume: an interrupted run's study is kept and the stage resumes it (its dead trial is
    retried), instead of starting over; cheaper, but the sampler's draws after the restart differ
    from an uninterrupted run's, so the arm is marked `resumed`.
    """
    params = demo_params(n_trials=n_trials, **{**BASE, **overrides})
    params["seed"] = seed
    workdir = cache / f"seed{seed}-n{n_trials}-{arm_label(overrides)}"
    summary = workdir / "arm.json"
    if summary.is_file():
        kept = json.loads(summary.read_text())
        before, now = search_inputs(kept["params"]), search_inputs(params)
        if before == now:
            return kept
        # A kept run can be an hour of CPU: never delete it because of a mistake here (e.g.
        # RETFOUND_BENCH_PREPARED unset); the user deletes it to rerun.
        changed = sorted(k for k in now if before.get(k) != now.get(k))
        raise SystemExit(
            f"{workdir}: kept run made with other {', '.join(changed)}; delete it to rerun"
        )
    # One process per arm: another benchmark reading the cache must not start over (delete) a
    # run that a first one is still making.
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / f".{workdir.name}.lock", "w")  # noqa: SIM115 (held until the run ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"{workdir}: being run by another process; wait for it") from None
    resumed = resume and (workdir / "optuna").is_dir()
    if not resumed:
        shutil.rmtree(workdir, ignore_errors=True)  # an interrupted or outdated run: start over
    _, seconds = run_hpo_search(workdir, params)
    table = trials(workdir, params)
    completed = table[table["state"] == "COMPLETE"]
    result = {
        "params": params,
        "seed": seed,
        "arm": arm_label(overrides),
        "trials": len(table),
        "pruned": int((table["state"] == "PRUNED").sum()),
        "epochs_run": int(table["epochs_run"].sum()),
        "epoch_budget": len(table) * params["hpo"]["num_epochs"],
        "best_value": round(float(completed["objective"].max()), 2),
        "best_after": best_after(table, sorted({8, 16, n_trials} & set(range(1, n_trials + 1)))),
        "seconds": round(seconds, 1),
        **({"resumed": True} if resumed else {}),
    }
    summary.write_text(json.dumps(result, indent=2))
    return json.loads(summary.read_text())  # as a later read gives it (string keys)


def study_histories(cache: Path, seed: int, n_trials: int, overrides: dict) -> list[dict]:
    """Each trial of a kept run: its state, objective and per-epoch validation history."""
    import optuna

    params = demo_params(n_trials=n_trials, **{**BASE, **overrides})
    workdir = cache / f"seed{seed}-n{n_trials}-{arm_label(overrides)}"
    name = params["hpo"]["study_name"]
    storage = f"sqlite:///{workdir / 'optuna' / name / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        {"number": t.number, "state": t.state.name, "history": t.user_attrs.get("history", [])}
        for t in study.trials
    ]


def main() -> None:
    """Run (or read back) one arm and print what it measured: for queues of long runs."""
    import argparse

    parser = argparse.ArgumentParser(description="Run one demo search arm; prints JSON.")
    parser.add_argument("--arm", default="", help="hpo overrides, e.g. pruner=median,prune_on=loss")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    parser.add_argument("--resume", action="store_true", help="resume an interrupted run's study")
    args = parser.parse_args()
    result = run_arm(args.cache, args.seed, args.n_trials, parse_arm(args.arm), args.resume)
    print(json.dumps({k: v for k, v in result.items() if k != "params"}))


if __name__ == "__main__":
    main()
