"""`retfound-adaptation`: LoRA against full fine-tuning and linear probing, as one pipeline product.

    retfound-adaptation run      # one DVC experiment per adaptation, then the table
    retfound-adaptation table    # the table again, from experiments (or folders) that exist

`run` runs the whole pipeline once per adaptation, `dvc exp run --temp -n adapt-<adaptation>
-S model.adaptation=<adaptation>`, one after another (an arm whose experiment exists is kept;
`--rerun` runs it again): the same params.yaml but for the adaptation, so the same seed and the
same splits (prepare-split is shared). `-S key=value` applies to every arm. It then writes
<out>/comparison.json and comparison.md: per adaptation what it cost (trainable parameters,
peak memory, seconds per epoch of train-best, the delivered model's size on disk, the search's
trials and time) and what it scored (QWK and referable-DR AUROC with their 95 % intervals on
val, test and every other dataset), and each adaptation's paired difference from LoRA
(`retfound-compare`: a paired bootstrap over the same images, with a p-value).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import UserError
from retfound_hpo.core.files import finite, write_json_atomic, write_text_atomic
from retfound_hpo.core.recipes import ADAPTATIONS
from retfound_hpo.evaluation.adaptation_report import markdown
from retfound_hpo.evaluation.compare import Variant, compare

log = logging.getLogger(__name__)

QUALITY = ("kappa", "referable_auroc")  # QWK and referable-DR AUROC
COST = ("trainable_params", "peak_memory_mb", "seconds_per_epoch", "delivery_bytes")


def run_arms(modes: list[str], prefix: str, settings: list[str], rerun: bool, repo: str) -> None:
    """`dvc exp run --temp` once per adaptation whose experiment is missing (or all: rerun)."""
    listed = subprocess.run(
        ["dvc", "exp", "list", "--name-only"], cwd=repo, capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise UserError(f"dvc exp list failed in {repo}: {listed.stderr.strip()[-300:]}")
    existing = set(listed.stdout.split())
    for mode in modes:
        name = f"{prefix}-{mode}"
        if name in existing and not rerun:
            log.info("%s exists: kept (--rerun runs it again)", name)
            continue
        if name in existing:
            subprocess.run(["dvc", "exp", "remove", name], cwd=repo, check=True)
        cmd = ["dvc", "exp", "run", "--temp", "-n", name, "-S", f"model.adaptation={mode}"]
        for setting in settings:
            cmd += ["-S", setting]
        log.info("running %s", " ".join(cmd))
        if subprocess.run(cmd, cwd=repo).returncode != 0:
            raise UserError(f"{name}: `{' '.join(cmd)}` failed; see its output above")


def _read(variant: Variant, rel: str) -> bytes:
    if not variant.exists(rel):
        raise UserError(f"{variant.spec}: no {rel}; has its pipeline run to the end?")
    with variant.fs.open(variant.root + rel, "rb") as f:
        return f.read()


def arm_summary(mode: str, variant: Variant) -> dict:
    """What one arm cost and scored, read from its pipeline's outputs."""
    params = yaml.safe_load(_read(variant, "params.yaml"))
    adaptation = (params.get("model") or {}).get("adaptation", "lora")
    if adaptation != mode:
        raise UserError(f"{variant.spec}: model.adaptation is {adaptation}, not {mode}")
    hpo = params.get("hpo") or {}
    study = f"{hpo.get('output_dir', 'results/optuna')}/{hpo.get('study_name')}"
    trials = pd.read_csv(io.BytesIO(_read(variant, f"{study}/trials.csv")))
    train = json.loads(_read(variant, "results/train/metrics.json"))
    evaluation = json.loads(_read(variant, "results/eval/metrics.json"))
    quality = {
        name: {
            k: figures.get(k)
            for metric in QUALITY
            for k in (metric, f"{metric}_ci_low", f"{metric}_ci_high")
        }
        for name, figures in evaluation.items()
    }
    return {
        "experiment": variant.spec,
        "arch": (params.get("model") or {}).get("arch"),
        "cost": {k: train.get(k) for k in COST},
        "train_best": {
            "best_epoch": train.get("best_epoch"),
            "epochs_run": train.get("epochs_run"),
        },
        "search": {
            "trials": int(len(trials)),
            "complete": int((trials["state"] == "COMPLETE").sum()),
            "pruned": int((trials["state"] == "PRUNED").sum()),
            "minutes": round(float(trials["duration_seconds"].sum()) / 60, 1),
        },
        "quality": quality,
    }


def comparison(arms: dict[str, str], repo: str, resamples: int, seed: int) -> dict:
    """Every arm's summary and each arm's paired differences from LoRA."""
    variants = {mode: Variant(spec, repo) for mode, spec in arms.items()}
    out = {"arms": {mode: arm_summary(mode, v) for mode, v in variants.items()}, "vs_lora": {}}
    for mode, spec in arms.items():
        if mode == "lora" or "lora" not in arms:
            continue
        args = argparse.Namespace(
            a=arms["lora"], b=spec, repo=repo, dataset=None, metric=list(QUALITY),
            resamples=resamples, seed=seed, level=0.95, unit="auto", eval_dir="results/eval",
        )  # fmt: skip
        out["vs_lora"][mode] = compare(args)["datasets"]
    out["resamples"], out["seed"] = resamples, seed
    return out


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="retfound-adaptation", description=description)
    parser.add_argument("action", choices=("run", "table"), help="run the arms, or tabulate")
    parser.add_argument(
        "--modes", nargs="+", default=list(ADAPTATIONS), choices=ADAPTATIONS,
        help="adaptations to compare (default: all three)",
    )  # fmt: skip
    parser.add_argument("--prefix", default="adapt", help="experiment names: <prefix>-<mode>")
    parser.add_argument(
        "--arm", action="append", default=[], metavar="MODE=SPEC",
        help="table: read MODE from SPEC (an experiment, branch, commit or folder) instead",
    )  # fmt: skip
    parser.add_argument("-S", "--set", action="append", default=[], help="run: -S for every arm")
    parser.add_argument("--rerun", action="store_true", help="run: run existing arms again")
    parser.add_argument("--out", default="results/adaptation", help="folder for the table")
    parser.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    args = parser.parse_args(argv)

    def run() -> None:
        arms = {mode: f"{args.prefix}-{mode}" for mode in args.modes}
        for item in args.arm:
            mode, sep, spec = item.partition("=")
            if not sep or mode not in ADAPTATIONS:
                raise UserError(f"--arm {item!r}: give MODE=SPEC, MODE one of {list(ADAPTATIONS)}")
            arms[mode] = spec
        if args.action == "run":
            run_arms(args.modes, args.prefix, args.set, args.rerun, args.repo)
        report = {**comparison(arms, args.repo, args.resamples, args.seed), "machine": machine()}
        out = Path(args.out)
        write_json_atomic(out / "comparison.json", finite(report))
        write_text_atomic(out / "comparison.md", markdown(report))
        print(f"wrote {out / 'comparison.md'} and {out / 'comparison.json'}")

    run_stage(run)  # offline defaults, logging, and one line + exit code 2 for bad input


if __name__ == "__main__":
    main()
