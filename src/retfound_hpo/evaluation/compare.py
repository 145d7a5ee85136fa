"""`retfound-compare A B`: is variant B better than variant A, or is the difference noise?

A and B are DVC experiments, branches or commits of the repository (anything `dvc.api` takes as a
`rev`), or folders holding a results/eval tree (e.g. a copy of another run). Both variants'
per-image predictions (results/eval/datasets/<name>/predictions.csv, kept in git: any commit can
be compared from a fresh clone) are matched by image id, and each metric's difference B - A gets
a paired bootstrap (paired.py): every resample draws the same units for both variants, so the
variation the two share (which images happen to be hard) cancels, and the interval is narrower
than two independent intervals would suggest. The referable AUROC also gets DeLong's test, and
the p-values of the metrics compared on a dataset Holm's correction.

Metrics: those of metrics.weighted_metrics (default: accuracy, quadratic kappa, macro AUROC,
macro F1, referable-DR AUROC) and the referable-DR operating point's sensitivity and specificity
(also PPV, NPV), each variant at its own threshold fixed on its val split, from the decisions
predictions.csv records. Resampling unit: the one prepare-split recorded (predictions.csv's
`unit`: patients, exams and duplicate groups joined; data/units.py), in older files the patient.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import DatasetError, UserError
from retfound_hpo.core.files import finite  # NaN -> null: strict JSON
from retfound_hpo.data.units import describe_units
from retfound_hpo.evaluation.paired import DEFAULT_METRICS, paired_comparison, paired_predictions
from retfound_hpo.evaluation.predictions import read_predictions

log = logging.getLogger(__name__)


class Variant:
    """One side of the comparison: a folder, or a revision of a DVC repository."""

    def __init__(self, spec: str, repo: str = ".") -> None:
        self.spec = spec
        if Path(spec).is_dir():
            from fsspec.implementations.local import LocalFileSystem

            self.fs, self.root = LocalFileSystem(), Path(spec).resolve().as_posix() + "/"
            self.errors: tuple[type[Exception], ...] = (OSError,)
            return
        from dvc.api import DVCFileSystem
        from dvc.exceptions import DvcException
        from dvc_data.index.index import DataIndexError
        from scmrepo.exceptions import SCMError

        # a revision whose outputs live in DVC's cache, which this clone lacks
        self.errors = (DataIndexError, DvcException, OSError)

        try:
            self.fs, self.root = DVCFileSystem(repo, rev=spec), ""
            self.fs.ls("", detail=False)  # opens the repository and the revision now
        except (DvcException, SCMError) as err:
            raise UserError(
                f"{spec!r}: neither a folder nor a DVC experiment, branch or commit of "
                f"{Path(repo).resolve()} ({err})"
            ) from None

    def _unavailable(self, rel: str, err: Exception) -> DatasetError:
        if isinstance(self.errors[0], type) and self.errors == (OSError,):
            return DatasetError(f"{self.spec}: cannot read {rel} ({err})")
        return DatasetError(
            f"{self.spec}: {rel} is not in this clone: that revision keeps its predictions in "
            "DVC's cache, which is neither here nor on a remote (`dvc pull` or `dvc exp pull`, "
            f"or rerun evaluate-cross-dataset there; {type(err).__name__})"
        )

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self.root + rel)
        except self.errors as err:
            raise self._unavailable(rel, err) from None

    def read_csv(self, rel: str) -> pd.DataFrame:
        try:
            with self.fs.open(self.root + rel, "rb") as f:
                data = f.read()
        except self.errors as err:
            raise self._unavailable(rel, err) from None
        return read_predictions(data)

    def datasets(self, eval_dir: str) -> list[str]:
        """Names of the datasets this variant has predictions for."""
        folder = f"{eval_dir}/datasets"
        if not self.exists(folder):
            return []
        try:
            listed = self.fs.ls(self.root + folder, detail=False)
        except self.errors as err:
            raise self._unavailable(folder, err) from None
        names = [Path(p.rstrip("/")).name for p in listed]
        return sorted(n for n in names if self.exists(f"{folder}/{n}/predictions.csv"))


def compare_dataset(
    a: Variant, b: Variant, name: str, args: argparse.Namespace
) -> dict[str, object]:
    """The paired comparison on one dataset."""
    rel = f"{args.eval_dir}/datasets/{name}/predictions.csv"
    for side, variant in (("A", a), ("B", b)):
        if not variant.exists(rel):
            raise DatasetError(
                f"{name}: {side} ({variant.spec}) has no {rel}; datasets there: "
                f"{variant.datasets(args.eval_dir) or 'none'} (rerun evaluate-cross-dataset "
                "on that variant; validation predictions are written as the dataset 'val')"
            )
    table_a = a.read_csv(rel)
    paired = paired_predictions(table_a, b.read_csv(rel), name)
    n = len(paired.ids)
    if args.unit == "image" or paired.units is None:
        paired.units = None
        unit = {"unit": "image", "units": n}
    else:
        unit = describe_units(table_a.assign(unit=paired.units), pd.Series(paired.units))
    metrics = tuple(args.metric) if args.metric else None
    result = paired_comparison(paired, metrics, args.resamples, args.seed, args.level)
    return {"n_images": n, "unit": unit["unit"], "n_units": unit["units"], "metrics": result}


def format_table(report: dict) -> str:
    """The report as an aligned text table, one row per dataset and metric."""
    level = round(100 * report["level"])
    rows = []

    def row(name: str, metric: str, r: dict, test: dict, holm: float | None) -> dict:
        fmt = "{:.2f}" if metric == "accuracy" else "{:.3f}"
        signed = fmt.replace("{:", "{:+")
        interval = f"[{signed.format(test['ci_low'])}, {signed.format(test['ci_high'])}]"
        return {
            "dataset": name,
            "metric": metric,
            "A": fmt.format(r["a"]),
            "B": fmt.format(r["b"]),
            "B - A": signed.format(test["diff"]),
            f"{level}% CI": interval,
            "p": _p(test["p_value"]),
            "p Holm": "" if holm is None else _p(holm),
        }

    for name, ds in report["datasets"].items():
        for metric, r in ds["metrics"].items():
            delong = r.get("delong")
            rows.append(row(name, metric, r, r, None if delong else r.get("p_holm")))
            if delong:  # the test papers report; the bootstrap row above is its check
                rows.append(row(name, f"{metric} (DeLong)", r, delong, r.get("p_holm")))
    units = ", ".join(
        f"{name}: {ds['n_units']} {ds['unit']}s" for name, ds in report["datasets"].items()
    )
    head = (
        f"A = {report['a']}, B = {report['b']}: B - A with paired bootstrap intervals "
        f"({report['resamples']} resamples of {units}); the referable AUROC also by DeLong's "
        "test; p Holm: adjusted over the metrics of a dataset"
    )
    return head + "\n\n" + pd.DataFrame(rows).to_string(index=False)


def _p(p: float) -> str:
    return "nan" if p != p else "<0.001" if p < 0.001 else f"{p:.3f}"


def compare(args: argparse.Namespace) -> dict:
    """The comparison of A and B on the chosen (default: every shared) dataset."""
    a, b = Variant(args.a, args.repo), Variant(args.b, args.repo)
    names = args.dataset
    if not names:
        shared = set(a.datasets(args.eval_dir)) & set(b.datasets(args.eval_dir))
        names = sorted(shared)
        if not names:
            raise DatasetError(
                f"A ({args.a}) and B ({args.b}) share no dataset under "
                f"{args.eval_dir}/datasets; run evaluate-cross-dataset on both"
            )
    datasets = {}
    for name in names:
        log.info("comparing %s and %s on %s", args.a, args.b, name)
        datasets[name] = compare_dataset(a, b, name, args)
    return {
        "a": args.a,
        "b": args.b,
        "resamples": args.resamples,
        "seed": args.seed,
        "level": args.level,
        "datasets": datasets,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="retfound-compare",
        description="Paired comparison of two variants' predictions, dataset by dataset: each "
        "metric's difference B - A with a paired bootstrap interval and p-value.",
    )
    parser.add_argument("a", help="variant A: DVC experiment, branch or commit, or a folder")
    parser.add_argument("b", help="variant B: the same kinds")
    parser.add_argument(
        "-d", "--dataset", "--split", action="append",
        help="dataset to compare, e.g. val or test (repeatable; default: every one both have)",
    )  # fmt: skip
    parser.add_argument(
        "-m", "--metric", action="append",
        help=f"metric to compare (repeatable; default: {', '.join(DEFAULT_METRICS)})",
    )  # fmt: skip
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    parser.add_argument("--level", type=float, default=0.95, help="interval level")
    parser.add_argument(
        "--unit", choices=("auto", "image"), default="auto",
        help="resample patients where predictions.csv names them (auto), or images",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    parser.add_argument("--eval-dir", default="results/eval", help="evaluate.output_dir")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples: {args.resamples} is not allowed; must be >= 1")
    if not 0 < args.level < 1:
        parser.error(f"--level: {args.level} is not allowed; must be between 0 and 1")

    def run() -> None:
        report = compare(args)
        if args.json:
            print(json.dumps(finite(report), indent=2, default=float))
        else:
            print(format_table(report))

    run_stage(run)  # offline defaults, logging, and one line + exit code 2 for bad input


if __name__ == "__main__":
    main()
