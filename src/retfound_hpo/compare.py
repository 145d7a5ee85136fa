"""`retfound-compare A B`: is variant B better than variant A, or is the difference noise?

A and B are DVC experiments, branches or commits of the repository (anything `dvc.api` takes as a
`rev`), or folders holding a results/eval tree (e.g. a copy of another run). Both variants'
per-image predictions (results/eval/datasets/<name>/predictions.csv) are matched by image id, and
each metric's difference B - A gets a paired bootstrap: every resample draws the same images for
both variants, so the variation the two share (which images happen to be hard) cancels, and the
interval is narrower than two independent intervals would suggest.

Metrics: those of metrics.weighted_metrics (default: accuracy, quadratic kappa, macro AUROC,
macro F1, referable-DR AUROC) and the referable-DR operating point's sensitivity and specificity
(also PPV, NPV), each variant at its own threshold fixed on its val split, from the decisions
predictions.csv records. Resampling unit: patients where predictions.csv names patients with
several images (both eyes of an EyePACS patient are drawn together), else images.

The p-value is two-sided and comes from the same resamples as the interval: twice the smaller
share of resampled differences at or below zero and at or above zero, with the usual +1
Monte-Carlo correction (never 0), so p < 0.05 about when the 95 % interval excludes zero. A
resample where a metric is undefined for either variant (e.g. no grade-4 image drawn) is left out
for that metric, and the resamples used are counted.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retfound_hpo.cli import run_stage
from retfound_hpo.errors import DatasetError, UserError
from retfound_hpo.io import _finite as finite  # NaN -> null: strict JSON
from retfound_hpo.metrics import bootstrap_weights, resampling_units, weighted_metrics
from retfound_hpo.operating_point import REFERABLE_GRADE, weighted_operating_point

log = logging.getLogger(__name__)

DEFAULT_METRICS = (
    "accuracy",
    "kappa",
    "auroc",
    "f1",
    "referable_auroc",
    "referable_sensitivity",  # at each variant's own operating point, fixed on its val split
    "referable_specificity",
)
PROB_COLUMN = re.compile(r"prob_(\d+)")


class Variant:
    """One side of the comparison: a folder, or a revision of a DVC repository."""

    def __init__(self, spec: str, repo: str = ".") -> None:
        self.spec = spec
        if Path(spec).is_dir():
            from fsspec.implementations.local import LocalFileSystem

            self.fs, self.root = LocalFileSystem(), Path(spec).resolve().as_posix() + "/"
            return
        from dvc.api import DVCFileSystem
        from dvc.exceptions import DvcException
        from scmrepo.exceptions import SCMError

        try:
            self.fs, self.root = DVCFileSystem(repo, rev=spec), ""
            self.fs.ls("", detail=False)  # opens the repository and the revision now
        except (DvcException, SCMError) as err:
            raise UserError(
                f"{spec!r}: neither a folder nor a DVC experiment, branch or commit of "
                f"{Path(repo).resolve()} ({err})"
            ) from None

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.root + rel)

    def read_csv(self, rel: str) -> pd.DataFrame:
        with self.fs.open(self.root + rel, "rb") as f:
            return pd.read_csv(io.BytesIO(f.read()), dtype={"id": str, "patient": str})

    def datasets(self, eval_dir: str) -> list[str]:
        """Names of the datasets this variant has predictions for."""
        folder = f"{eval_dir}/datasets"
        if not self.exists(folder):
            return []
        names = [Path(p.rstrip("/")).name for p in self.fs.ls(self.root + folder, detail=False)]
        return sorted(n for n in names if self.exists(f"{folder}/{n}/predictions.csv"))


@dataclass
class Paired:
    """Both variants' predictions on the same images, in A's row order."""

    ids: pd.Series
    y_true: np.ndarray  # (N,)
    probs: tuple[np.ndarray, np.ndarray]  # A's and B's, (N, C) each
    # A's and B's referable-DR decisions (N,), each at its own threshold fixed on val
    referred: tuple[np.ndarray, np.ndarray] | None = None
    patients: np.ndarray | None = None  # (N,); None: every image its own patient


def paired_predictions(a: pd.DataFrame, b: pd.DataFrame, name: str) -> Paired:
    """Match B's predictions.csv rows to A's by image id; refuse if the images differ."""
    for side, table in (("A", a), ("B", b)):
        if table["id"].duplicated().any():
            dup = table.loc[table["id"].duplicated(), "id"].iloc[0]
            raise DatasetError(f"{name}: {side}'s predictions list image {dup!r} twice")
    only_a = sorted(set(a["id"]) - set(b["id"]))
    only_b = sorted(set(b["id"]) - set(a["id"]))
    if only_a or only_b:
        example = (only_a or only_b)[0]
        raise DatasetError(
            f"{name}: A and B graded different images ({len(only_a)} only in A, {len(only_b)} "
            f"only in B, e.g. {example!r}); compare variants evaluated on the same data"
        )
    b = b.set_index("id").loc[a["id"]].reset_index()
    if not (a["true_grade"].to_numpy() == b["true_grade"].to_numpy()).all():
        raise DatasetError(f"{name}: A and B give the same images different true grades")
    cols_a, cols_b = _prob_columns(a), _prob_columns(b)
    if cols_a != cols_b:
        raise DatasetError(f"{name}: A has columns {cols_a}, B has {cols_b}: different grades")
    both = "referable" in a.columns and "referable" in b.columns  # older runs lack it
    patients = next((t["patient"].to_numpy() for t in (a, b) if "patient" in t.columns), None)
    return Paired(
        ids=a["id"],
        y_true=a["true_grade"].to_numpy(dtype=int),
        probs=(a[cols_a].to_numpy(float), b[cols_b].to_numpy(float)),
        referred=(a["referable"].to_numpy(bool), b["referable"].to_numpy(bool)) if both else None,
        patients=patients,
    )


def _prob_columns(table: pd.DataFrame) -> list[str]:
    cols = [c for c in table.columns if PROB_COLUMN.fullmatch(c)]
    return sorted(cols, key=lambda c: int(PROB_COLUMN.fullmatch(c).group(1)))


def _weighted(
    y_true: np.ndarray, probs: np.ndarray, referred: np.ndarray | None, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """One variant's metrics for B weightings (B, N) -> {name: (B,)}, the operating point's
    sensitivity, specificity, PPV and NPV from its recorded decisions."""
    out = weighted_metrics(y_true, probs, weights)
    if referred is not None:
        # The decisions as the only P(grade >= 2) mass, threshold 0.5: weighted_operating_point
        # then counts exactly the decisions predictions.csv records.
        mass = np.zeros((len(y_true), REFERABLE_GRADE + 1))
        mass[:, REFERABLE_GRADE] = referred
        out |= weighted_operating_point(y_true, mass, 0.5, weights)
    return out


def paired_bootstrap(
    paired: Paired,
    metrics: tuple[str, ...] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float | int]]:
    """Per metric (default: DEFAULT_METRICS that the predictions allow): A, B, diff (B - A), its
    percentile interval, p-value and the resamples used.

    Resamples draw patients when paired.patients groups images, else images (as evaluation's
    intervals do, with the same seeded draws)."""
    y, (probs_a, probs_b) = paired.y_true, paired.probs
    referred_a, referred_b = paired.referred or (None, None)
    ones = np.ones((1, len(y)))
    point_a = {k: float(v[0]) for k, v in _weighted(y, probs_a, referred_a, ones).items()}
    point_b = {k: float(v[0]) for k, v in _weighted(y, probs_b, referred_b, ones).items()}
    if metrics is None:
        metrics = tuple(m for m in DEFAULT_METRICS if m in point_a)
    unknown = [m for m in metrics if m not in point_a]
    if unknown:
        raise UserError(f"--metric {unknown[0]}: not a metric here; choose from {sorted(point_a)}")
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    _, units = resampling_units(paired.patients, len(y))
    for weights in bootstrap_weights(units, n_resamples, seed):
        on_a = _weighted(y, probs_a, referred_a, weights)  # the same resamples for both
        on_b = _weighted(y, probs_b, referred_b, weights)
        for m in metrics:
            diffs[m].append(on_b[m] - on_a[m])
    tail = 50.0 * (1.0 - level)
    out = {}
    for m in metrics:
        d = np.concatenate(diffs[m]) if diffs[m] else np.empty(0)
        d = d[np.isfinite(d)]
        low, high = np.percentile(d, [tail, 100.0 - tail]) if d.size else (np.nan, np.nan)
        out[m] = {
            "a": point_a[m],
            "b": point_b[m],
            "diff": point_b[m] - point_a[m],
            "ci_low": float(low),
            "ci_high": float(high),
            "p_value": _p_value(d),
            "n_resamples": int(d.size),
        }
    return out


def _p_value(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value that the difference is zero (NaN without resamples)."""
    if not d.size:
        return float("nan")
    smaller = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2.0 * (smaller + 1) / (d.size + 1)))


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
    paired = paired_predictions(a.read_csv(rel), b.read_csv(rel), name)
    if args.unit == "image":
        paired.patients = None
    unit, units = resampling_units(paired.patients, len(paired.ids))
    metrics = tuple(args.metric) if args.metric else None
    result = paired_bootstrap(paired, metrics, args.resamples, args.seed, args.level)
    n = len(paired.ids)
    return {"n_images": n, "unit": unit, "n_units": int(units.max()) + 1, "metrics": result}


def format_table(report: dict) -> str:
    """The report as an aligned text table, one row per dataset and metric."""
    level = round(100 * report["level"])
    rows = []
    for name, ds in report["datasets"].items():
        for metric, r in ds["metrics"].items():
            fmt = "{:.2f}" if metric == "accuracy" else "{:.3f}"
            signed = fmt.replace("{:", "{:+")
            p = r["p_value"]
            interval = f"[{signed.format(r['ci_low'])}, {signed.format(r['ci_high'])}]"
            rows.append(
                {
                    "dataset": name,
                    "metric": metric,
                    "A": fmt.format(r["a"]),
                    "B": fmt.format(r["b"]),
                    "B - A": signed.format(r["diff"]),
                    f"{level}% CI": interval,
                    "p": "<0.001" if p < 0.001 else f"{p:.3f}",
                }
            )
    units = ", ".join(
        f"{name}: {ds['n_units']} {ds['unit']}s" for name, ds in report["datasets"].items()
    )
    head = (
        f"A = {report['a']}, B = {report['b']}: B - A with paired bootstrap intervals "
        f"({report['resamples']} resamples of {units})"
    )
    return head + "\n\n" + pd.DataFrame(rows).to_string(index=False)


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
