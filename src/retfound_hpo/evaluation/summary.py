"""results/eval/summary.md: the evaluation in one page, with what each interval is, in one place."""

from __future__ import annotations

import math

ROWS = (  # (metric, label)
    ("accuracy", "accuracy %"),
    ("kappa", "quadratic kappa"),
    ("auroc", "macro AUROC"),
    ("f1", "macro F1"),
    ("referable_auroc", "referable AUROC"),
    ("referable_sensitivity", "referable sensitivity"),
    ("referable_specificity", "referable specificity"),
    ("referable_ppv", "referable PPV (this set's prevalence)"),
    ("referable_npv", "referable NPV (this set's prevalence)"),
    ("referable_ppv_at_prevalence", "referable PPV at the stated prevalence"),
    ("referable_npv_at_prevalence", "referable NPV at the stated prevalence"),
    ("ece", "ECE (grades, top label)"),
    ("ece_bootstrap_bias", "its bootstrap bias"),
    ("referable_ece", "ECE of P(referable)"),
    ("referable_ece_bootstrap_bias", "its bootstrap bias"),
    ("referable_calibration_slope", "calibration slope of P(referable)"),
    ("referable_calibration_intercept", "calibration intercept of P(referable)"),
)
GROUP_ROWS = ROWS[4:11]  # referable AUROC to NPV at the stated prevalence
SEED_ROWS = ("accuracy", "kappa", "auroc", "referable_sensitivity", "referable_specificity")


def interval_notes(first: dict, resamples: int) -> list[str]:
    """What each interval is (the one place that says it; README repeats it)."""
    method = first.get("ci_proportions", "wilson").split(",")[0]
    name = {"wilson": "Wilson score", "clopper-pearson": "Clopper-Pearson (exact)"}.get(method)
    boot = (
        f"a 95 % percentile cluster bootstrap: {resamples} resamples of units drawn with "
        "replacement (seeded by `seed`); a resample where the metric is undefined (e.g. no "
        "grade-4 image drawn, for macro AUROC) is left out and counted (`_ci_undefined`)"
        if resamples
        else "none (evaluate.bootstrap_samples is 0)"
    )
    return [
        "- **Resampling unit**: the connected group of images that share a patient, an exam or a "
        "near-duplicate group (the unit the split kept together). Every interval below treats "
        "units, not images, as independent; the table of datasets says what the unit is there.",
        f"- **Proportions** (accuracy, sensitivity per grade, referable sensitivity, "
        f"specificity, PPV, NPV): the 95 % {name} interval on the effective sample size "
        "n / deff, where deff is Kish's design effect of the unit (cluster-robust variance / "
        "binomial variance, between 1 and the value for fully correlated units, which is used "
        "when fewer than 3 minority outcomes leave the correlation unmeasured). It never has zero "
        "width at 0 or 1; with one image per unit it is the plain interval.",
        f"- **AUROC, kappa, F1, RETFound score, ECE**: {boot}.",
        "- **ECE** is biased upwards in small samples: `_bootstrap_bias` is the mean of the "
        "resampled ECEs minus the ECE, and ECE minus it a bias-corrected estimate.",
        "- **PPV and NPV at the stated prevalence**: Bayes' rule from sensitivity and "
        "specificity; 95 % score (Koopman / Miettinen-Nurminen) interval of the likelihood "
        "ratio on effective counts, the prevalence taken as known.",
        "- **Calibration slope and intercept of P(referable)**: logistic recalibration, "
        "y ~ a + b logit(p) (slope; 1 is ideal) and y ~ a + offset(logit p) (intercept; 0 is "
        "ideal), 95 % Wald intervals, cluster-robust by unit.",
        "- **Per-exam (per-patient) referral**: an exam is referable when either eye is, and "
        "referred when either eye's P(referable) reaches the threshold; proportions as above "
        "over exams, AUROC of the exam's highest P(referable) with a 95 % logit interval and "
        "Obuchowski's clustered variance.",
        "- **Seeds**: see the seeds section; that interval is over training runs, not images.",
        "- **A figure without an interval** gave the same value in every resample (kappa 0 of a "
        "model that predicts one grade for every image, AUROC 1 of a perfect separation): the "
        "bootstrap cannot measure its uncertainty, and a zero-width interval would claim "
        "certainty.",
    ]


def _cell(m: dict, key: str) -> str:
    value = m.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    digits = 2 if key == "accuracy" else 3
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _operating_point(m: dict) -> list[str]:
    if "referable_threshold" not in m:
        return ["No referable-DR operating point (no val split with referable grades)."]
    rule, target = m["referable_rule"], m.get("referable_target")
    text = [
        f"Rule `{rule}`, chosen on **val** and applied unchanged everywhere: refer when "
        f"P(grade >= 2) >= {m['referable_threshold']:.6g}."
    ]
    if rule == "sensitivity_lcb":
        bound = f"one-sided {100 * m['referable_confidence']:g} % lower confidence bound"
        text.append(f"The target, a {bound} of val sensitivity >= {target:g}, was")
        text.append(
            "met on val."
            if m["referable_target_reached"]
            else "**not met at any threshold: every val image is referred** (too few referable "
            "val images; a larger val split gives a usable threshold)."
        )
    elif rule == "sensitivity":
        text.append(
            f"The target, val sensitivity >= {target:g}, was met on val by the point estimate "
            "(whose true value falls short about half the time)."
        )
    expected = _cell(m, "referable_expected_sensitivity")
    bound = m["referable_expected_sensitivity_lower_bound"]
    confidence = 100 * m.get("referable_confidence", 0.95)
    text.append(
        f"Expected sensitivity on new data like val: {expected} (95 % interval), at least "
        f"{bound:.3f} with one-sided {confidence:g} % confidence."
    )
    return [" ".join(text)]


def _seeds(metrics: dict[str, dict]) -> list[str]:
    seeded = [n for n in metrics if "seeds" in metrics[n]]
    if not seeded:
        return []
    first = metrics[seeded[0]]["seeds"]
    lines = [
        "",
        "## Seeds",
        "",
        f"{first['interval']}. Each seed's value is in metrics.json "
        "(`<dataset>.seeds.<seed>.<metric>`).",
        "",
    ]
    rows = []
    for name in seeded:
        s = metrics[name]["seeds"]
        seeds = [k for k in s if k not in ("n", "interval", "mean", "sd", "ci95_low", "ci95_high")]
        for key in SEED_ROWS:
            if key in s["mean"]:
                each = ", ".join(f"{s[seed][key]:.3f}" for seed in seeds)
                mean = f"{s['mean'][key]:.3f} [{s['ci95_low'][key]:.3f}, {s['ci95_high'][key]:.3f}]"
                rows.append([name, key, each, mean])
    return lines + _table(["dataset", "metric", "seeds", "mean [interval]"], rows)


def summary_markdown(metrics: dict[str, dict]) -> str:
    """The summary of metrics.json's content (evaluate_datasets' result)."""
    names = list(metrics)
    first = metrics[names[0]]
    lines = ["# Evaluation summary", "", "## What each interval is", ""]
    lines += interval_notes(first, first.get("ci_resamples", 0))
    lines += ["", "## Datasets and their resampling unit", ""]
    lines += _table(
        ["dataset", "images", "unit", "units", "note"],
        [
            [n, str(m["n_images"]), m["ci_unit"], str(m["ci_units"]), m["ci_unit_note"]]
            for n, m in metrics.items()
        ],
    )
    lines += ["", "## Referable-DR operating point", ""] + _operating_point(first)
    if "prevalence" in first:
        lines += ["", f"Stated prevalence of referable DR: {first['prevalence']:g}."]
    lines += ["", "## Figures (95 % intervals as above)", ""]
    rows = [[label] + [_cell(metrics[n], key) for n in names] for key, label in ROWS]
    lines += _table(["metric", *names], [r for r in rows if any(r[1:])])
    grouped = {
        n: (k.removeprefix("per_"), m[k])
        for n, m in metrics.items()
        for k in ("per_exam", "per_patient")
        if k in m
    }
    if grouped:
        lines += ["", "## Referral per exam (or patient)", ""]
        header = ["metric"] + [f"{n} ({g['n']} {kind}s)" for n, (kind, g) in grouped.items()]
        rows = [[label] + [_cell(g, key) for _, g in grouped.values()] for key, label in GROUP_ROWS]
        lines += _table(header, rows)
    return "\n".join(lines + _seeds(metrics)) + "\n"
