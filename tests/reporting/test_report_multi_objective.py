"""summary_report.md of a multi-objective study: Pareto front, best trial, tables, plots."""

import optuna
import pytest
from PIL import Image
from test_report import NUM_EPOCHS, SPACE, assert_valid_plots, section, table

from retfound_hpo.reporting.report import write_report

# One xdist worker builds the module's report fixture once, not each worker its own.
pytestmark = pytest.mark.xdist_group("report_multi_objective")

ALPHA = "lora_alpha|lora_r=16/32"  # Optuna's name for a conditional parameter


def mo_objective(trial: optuna.Trial) -> tuple[float, float]:
    """Two objectives: a validation metric and a parameter count that grows with lora_r."""
    r = trial.suggest_categorical("lora_r", [4, 8, 16, 32])
    dropout = trial.suggest_float("dropout", 0.1, 0.5)
    hparams = {"lora_r": r, "dropout": dropout}
    if r >= 16:
        hparams["lora_alpha"] = trial.suggest_float(ALPHA, 1.0, 2.0)
    n_params = 1000 * r
    trial.set_user_attr("epochs_run", 3)
    trial.set_user_attr("trainable_params", n_params)
    trial.set_user_attr("hparams", hparams)
    return 60 + r / 2 + 10 * dropout, n_params


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A 2-objective study (metric, trainable params), reported with matplotlib."""
    study = optuna.create_study(
        study_name="mo",
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(mo_objective, n_trials=14)
    out = tmp_path_factory.mktemp("report_mo")
    text = write_report(study, out, SPACE, num_epochs=NUM_EPOCHS, png_backend="matplotlib")
    return study, out, text.read_text()


def test_multi_objective_pareto_and_best(multi):
    study, _, text = multi
    assert "| **Total** | 14 |" in section(text, "Study statistics")
    assert "`best_val_acc`, maximized; `trainable_params`, minimized" in text
    pareto = sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1], t.number))
    assert len(pareto) > 1
    pareto_section = section(text, "Pareto front")
    header = next(line for line in pareto_section.splitlines() if line.startswith("| Trial"))
    assert header.startswith("| Trial | best_val_acc | trainable_params | lora_r | dropout |")
    rows = table(pareto_section)
    assert [int(r[0]) for r in rows] == [t.number for t in pareto]
    assert [float(r[1]) for r in rows] == pytest.approx([t.values[0] for t in pareto], 1e-5)
    assert [r[2] for r in rows] == [str(int(t.values[1])) for t in pareto]

    best = section(text, "Best trial")
    assert f"- Trial: {pareto[0].number}\n" in best
    assert f"- trainable_params: {int(pareto[0].values[1])}\n" in best
    assert "hparams" not in text  # the dict attribute stays out of the tables


def test_multi_objective_top10_uses_plain_param_names(multi):
    study, _, text = multi
    complete = sorted(study.trials, key=lambda t: (-t.values[0], t.number))[:10]
    top_section = section(text, "Top 10 completed trials")
    header = next(line for line in top_section.splitlines() if line.startswith("| Rank"))
    assert "| lora_alpha |" in header and "lora_r=16" not in text
    rows = table(top_section)
    assert [int(r[1]) for r in rows] == [t.number for t in complete]
    col = header.strip("|").split(" | ").index("lora_alpha")
    assert [r[col] for r in rows] == [
        f"{t.params[ALPHA]:.6g}" if ALPHA in t.params else "–" for t in complete
    ]
    assert any(ALPHA in t.params for t in complete)


def test_multi_objective_plots(multi):
    _, out, text = multi
    assert_valid_plots(out)
    with Image.open(out / "plots" / "pareto_front.png") as img:
        img.verify()
    assert "Plotly.newPlot" in (out / "plots" / "pareto_front.html").read_text()
    assert "![Pareto front](plots/pareto_front.png)" in text
    # Only the intermediate values have nothing to show: pruning is off with 2 objectives.
    assert text.count("Not available:") == 1
    assert (
        "No intermediate values in multi-objective mode"
        in section(text, "Plots").split("### Intermediate values")[1].split("###")[0]
    )
