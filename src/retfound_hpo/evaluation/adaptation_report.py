"""comparison.md: the adaptation comparison (adaptation.py) as tables a reader can check, and in
words which of its differences the intervals resolve."""

from __future__ import annotations

import math

LABELS = {"lora": "LoRA", "full": "full fine-tuning", "linear_probe": "linear probing"}
METRIC_LABELS = {"kappa": "QWK", "referable_auroc": "referable AUROC"}


def _num(value, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def _interval(figures: dict, metric: str) -> str:
    low, high = figures.get(f"{metric}_ci_low"), figures.get(f"{metric}_ci_high")
    if _num(low) == "n/a" or _num(high) == "n/a":  # every resample the same: no interval
        return f"{_num(figures.get(metric))} (no interval)"
    return f"{_num(figures.get(metric))} [{_num(low)}, {_num(high)}]"


def _size(n_bytes) -> str:
    if n_bytes is None:
        return "n/a"
    return f"{n_bytes / 2**20:.2f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KB"


def cost_table(arms: dict) -> list[str]:
    total = arms.get("full", {}).get("cost", {}).get("trainable_params")  # every weight
    rows = [
        "| adaptation | trainable parameters | share of the model | peak memory (MB) | "
        "seconds per epoch | delivered model on disk | search: trials (complete / pruned), "
        "minutes | train-best: best epoch of run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, arm in arms.items():
        cost, search, tb = arm["cost"], arm["search"], arm["train_best"]
        share = f"{100 * cost['trainable_params'] / total:.2f} %" if total else "n/a"
        memory, epoch = (
            _num(cost["peak_memory_mb"], "{:.0f}"),
            _num(cost["seconds_per_epoch"], "{:.1f}"),
        )
        rows.append(
            f"| {LABELS[mode]} | {cost['trainable_params']:,} | {share} | {memory} | {epoch}"
            f" | {_size(cost['delivery_bytes'])} | {search['trials']} ({search['complete']} / "
            f"{search['pruned']}), {search['minutes']:.1f} | {tb['best_epoch']} of "
            f"{tb['epochs_run']} |"
        )
    return rows


def quality_table(arms: dict) -> list[str]:
    datasets = list(next(iter(arms.values()))["quality"])
    head = ["adaptation"] + [f"{d} {METRIC_LABELS[m]}" for d in datasets for m in METRIC_LABELS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, arm in arms.items():
        cells = [_interval(arm["quality"].get(d, {}), m) for d in datasets for m in METRIC_LABELS]
        rows.append(f"| {LABELS[mode]} | " + " | ".join(cells) + " |")
    return rows


def resolved(r: dict) -> bool:
    """Whether the paired interval excludes zero."""
    return r["ci_low"] > 0 or r["ci_high"] < 0


def difference_table(vs_lora: dict) -> tuple[list[str], list[str], list[str]]:
    rows = [
        "| adaptation | dataset | metric | LoRA | it | difference [95 % CI] | p | resolved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    yes, no = [], []
    for mode, datasets in vs_lora.items():
        order = sorted(datasets, key=lambda n: (n != "val", n != "test"))  # val, test, others
        for name, ds in ((n, datasets[n]) for n in order):
            for metric, r in ds["metrics"].items():
                p = "<0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}"
                ok = resolved(r)
                rows.append(
                    f"| {LABELS[mode]} | {name} ({ds['n_units']} {ds['unit']}s) | "
                    f"{METRIC_LABELS.get(metric, metric)} | {r['a']:.3f} | {r['b']:.3f} | "
                    f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {p} | "
                    f"{'yes' if ok else 'no'} |"
                )
                what = f"{LABELS[mode]} vs LoRA, {name} {METRIC_LABELS.get(metric, metric)}"
                (yes if ok else no).append(f"{what} ({r['diff']:+.3f})")
    return rows, yes, no


def markdown(report: dict) -> str:
    arms, vs_lora = report["arms"], report["vs_lora"]
    names = ", ".join(f"`{arm['experiment']}`" for arm in arms.values())
    lines = [
        "# LoRA vs full fine-tuning vs linear probing",
        "",
        f"Written by `retfound-adaptation` from {names}: one pipeline run per adaptation, the same",
        "params.yaml but `model.adaptation` (each with its own search space section and recipe),",
        "the same seed and the same splits. Costs are train-best's delivered run; timings from",
        f"the machine that ran the experiments (this table was written on {report['machine']}).",
        "",
        "## Cost",
        "",
        *cost_table(arms),
        "",
        "## Quality, with 95 % intervals (evaluate-cross-dataset's bootstrap)",
        "",
        *quality_table(arms),
        "",
        "A figure marked (no interval) gave the same value in every resample (kappa 0 of a "
        "model that predicts one grade for every image): the bootstrap cannot measure its "
        "uncertainty.",
        "",
    ]
    if vs_lora:
        rows, yes, no = difference_table(vs_lora)
        lines += [
            "## Paired difference from LoRA (`retfound-compare`: the same images resampled for "
            f"both, {report['resamples']} resamples)",
            "",
            *rows,
            "",
            "## What these intervals can and cannot resolve",
            "",
            "A difference is resolved when its paired 95 % interval excludes zero.",
            "",
            f"- Resolved: {'; '.join(yes) if yes else 'none'}.",
            f"- Not resolved (the interval spans zero; the data cannot tell these apart): "
            f"{'; '.join(no) if no else 'none'}.",
            "",
        ]
    return "\n".join(lines)
