"""export-report: summary_report.md contents and the plot files, on small synthetic studies."""

import datetime as dt
import re
import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from PIL import Image

from retfound_hpo.reporting import png
from retfound_hpo.reporting.report import write_report

# One xdist worker builds the module's report fixture once, not each worker its own.
pytestmark = pytest.mark.xdist_group("report")

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = {
    "lora_r": {"type": "categorical", "choices": [4, 8, 16, 32]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.1, "high": 0.5},
    "n_blocks": {"type": "int", "low": 1, "high": 4, "step": 1},
    "alpha": {
        "type": "float",
        "low": 1.0,
        "high": 2.0,
        "condition": {"param": "lora_r", "values": [16, 32]},
    },
}
NUM_EPOCHS = 6
PLOTS = [
    "optimization_history",
    "param_importance",
    "parallel_coordinate",
    "slice_plots",
    "intermediate_values",
    "contour",
    "timeline",
]
STORAGE = "sqlite:///results/optuna/demo/study.db"


def suggest(trial: optuna.Trial) -> dict:
    params: dict = {}
    for name, spec in SPACE.items():
        cond = spec.get("condition")
        if cond and params.get(cond["param"]) not in cond["values"]:
            continue
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(
                name, spec["low"], spec["high"], log=spec.get("log", False)
            )
        else:
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec["step"])
    return params


def objective(trial: optuna.Trial) -> float:
    """Outcome by trial number: complete (full or early-stopped), pruned, failed."""
    p = suggest(trial)
    score = 60 + p["lora_r"] / 2 + 10 * p["dropout"] + p["n_blocks"] / 10
    kind = trial.number % 5
    if kind == 3 and trial.number < 5:  # fails before its first epoch: no epochs_run
        trial.set_user_attr("fail_reason", "RuntimeError: CUDA out of memory")
        raise ValueError("out of memory")
    epochs = NUM_EPOCHS if kind == 0 else 3
    for epoch in range(1, epochs + 1):
        trial.report(score - (epochs - epoch), epoch)
        trial.set_user_attr("epochs_run", epoch)
    if kind == 1:
        raise optuna.TrialPruned()
    if kind == 2:
        trial.set_user_attr("fail_reason", "ValueError: bad batch")
        raise ValueError("bad batch")
    trial.set_user_attr("best_epoch", epochs)
    trial.set_user_attr("val_accuracy", score)
    trial.set_user_attr("val_kappa", 0.5)
    trial.set_user_attr("trainable_params", 1234)
    trial.set_user_attr("history", [{"epoch": e + 1, "val_accuracy": score} for e in range(epochs)])
    return score


def make_study(n_trials: int, running: bool = False) -> optuna.Study:
    study = optuna.create_study(
        study_name="demo", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(objective, n_trials=n_trials, catch=(ValueError,))
    if running:
        study.ask()  # a trial still in flight
    return study


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """20 trials plus one RUNNING, reported once with matplotlib: (study, out_dir, text)."""
    study = make_study(20, running=True)
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        study, out, SPACE, num_epochs=NUM_EPOCHS, png_backend="matplotlib", storage_url=STORAGE
    )
    assert path == out / "summary_report.md"
    return study, out, path.read_text()


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table in text."""
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]


def number_after(label: str, text: str) -> float:
    return float(re.search(re.escape(label) + r"\s*([-\d.e]+)", text).group(1))


def assert_valid_plots(out) -> None:
    for name in PLOTS:
        with Image.open(out / "plots" / f"{name}.png") as img:
            img.verify()
        html = (out / "plots" / f"{name}.html").read_text()
        assert "Plotly.newPlot" in html
        assert 'src="plotly.min.js"' in html  # the local copy: works offline, no CDN
    assert "plotly.js v" in (out / "plots" / "plotly.min.js").read_text()[:200]


def test_study_statistics(full):
    study, _, text = full
    rows = dict(table(section(text, "Study statistics")))
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING):
        assert int(rows[state.name]) == sum(t.state == state for t in study.trials) > 0
    assert int(rows["**Total**"]) == len(study.trials) == 21
    assert f"`{study.study_name}`" in text and STORAGE in text


def test_best_trial_and_top10(full):
    study, _, text = full
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    best_section = section(text, "Best trial")
    assert f"- Trial: {best.number}\n" in best_section
    assert number_after("- best_val_acc:", best_section) == pytest.approx(best.value, rel=1e-5)
    params = dict(table(best_section.split("| User attribute")[0]))
    assert {k: float(v) for k, v in params.items()} == pytest.approx(best.params, rel=1e-5)
    assert "| trainable_params | 1234 |" in best_section
    assert "| history |" not in best_section  # a learning curve is not a table cell

    top = sorted(complete, key=lambda t: (-t.value, t.number))[:10]
    top_section = section(text, "Top 10 completed trials")
    rows = table(top_section)
    assert [int(r[1]) for r in rows] == [t.number for t in top]
    assert [float(r[2]) for r in rows] == pytest.approx([t.value for t in top], rel=1e-5)
    header = next(line for line in top_section.splitlines() if line.startswith("| Rank"))
    assert all(f"| {name} |" in header for name in [*SPACE, "epochs_run"])
    values = [t.value for t in top]
    assert number_after("top 10:", top_section) == pytest.approx(statistics.mean(values), 1e-5)
    assert number_after("(sample, n − 1):", top_section) == pytest.approx(
        statistics.stdev(values), rel=1e-5
    )


def test_search_space_epochs_and_dashboard(full):
    study, _, text = full
    space = {row[0]: row for row in table(section(text, "Search space"))}
    assert list(space) == list(SPACE)
    assert (
        "[4, 8, 16, 32]" in space["lora_r"] and "param: lora_r, values: [16, 32]" in space["alpha"]
    )

    finished = [t for t in study.trials if t.state.is_finished() and "epochs_run" in t.user_attrs]
    run = sum(t.user_attrs["epochs_run"] for t in finished)
    total = dict((r[0], r[1:]) for r in table(section(text, "Epochs saved")))["**Total**"]
    assert [int(v) for v in total[:4]] == [
        len(finished),
        run,
        NUM_EPOCHS * len(finished),
        NUM_EPOCHS * len(finished) - run,
    ]
    assert "1 finished trial(s) recorded no epochs_run" in text
    assert f"optuna-dashboard {STORAGE}" in section(text, "Open the study interactively")
    assert "CUDA out of memory" in section(text, "Failed and diverged trials")


def test_all_plots_written_and_linked(full):
    _, out, text = full
    assert_valid_plots(out)
    links = set(re.findall(r"\((plots/[^)]+)\)", text))
    assert links == {f"plots/{n}.{ext}" for n in PLOTS for ext in ("png", "html")}
    assert "PNG backend: matplotlib." in text and "Not available" not in text


def test_time_spent_from_trial_datetimes(tmp_path):
    study = optuna.create_study(direction="maximize")
    start = dt.datetime(2024, 5, 1, 10, 0, 0)
    # two 1-hour trials, the second starts 30 min later and is pruned: it still ends the search
    for i, (offset, state) in enumerate([(0, TrialState.COMPLETE), (30, TrialState.PRUNED)]):
        begin = start + dt.timedelta(minutes=offset)
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=i,
                trial_id=i,
                state=state,
                value=50.0 if state == TrialState.COMPLETE else None,
                datetime_start=begin,
                datetime_complete=begin + dt.timedelta(hours=1),
                params={"dropout": 0.1 + i / 10},
                distributions={"dropout": FloatDistribution(0, 1)},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
            )
        )
    text = write_report(study, tmp_path, SPACE, png_backend="matplotlib").read_text()
    spent = section(text, "Time spent")
    assert "Sum of trial durations: 2:00:00 (2 finished trials)" in spent
    assert "last trial end: 1:30:00" in spent
    assert "hpo.num_epochs) not given" in text and "optuna-dashboard" not in text


def test_one_completed_trial_gets_explanatory_placeholders(tmp_path):
    study = make_study(2)  # trial 0 completes, trial 1 is pruned
    text = write_report(study, tmp_path, SPACE, png_backend="matplotlib").read_text()
    why = "Parameter importance needs at least 2 completed trials; this study has 1."
    assert why in text
    html = (tmp_path / "plots" / "param_importance.html").read_text()
    assert why in html.replace("\\u003cbr\\u003e", " ")  # the figure text wraps with <br>
    assert "The contour plot needs at least 2 completed trials" in text
    assert "Standard deviation (sample, n − 1): n/a (1 trial)" in text
    assert_valid_plots(tmp_path)


def test_empty_study(tmp_path):
    study = optuna.create_study(study_name="empty", direction="maximize")
    text = write_report(
        study, tmp_path, SPACE, num_epochs=NUM_EPOCHS, png_backend="matplotlib"
    ).read_text()
    assert "No completed trials" in text and "| **Total** | 0 |" in text
    assert text.count("Not available:") == len(PLOTS)
    assert_valid_plots(tmp_path)


def test_rerun_overwrites_and_removes_stale_plots(tmp_path):
    study = make_study(2)
    write_report(study, tmp_path, SPACE, png_backend="matplotlib")
    (tmp_path / "plots" / "old_plot.png").write_bytes(b"stale")
    study.optimize(objective, n_trials=1, catch=(ValueError,))
    text = write_report(study, tmp_path, SPACE, png_backend="matplotlib").read_text()
    assert text.count("# Hyperparameter search report") == 1
    assert "| **Total** | 3 |" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        [f"{n}.{ext}" for n in PLOTS for ext in ("png", "html")] + ["plotly.min.js"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "summary_report.md"]


def test_interrupted_run_leaves_previous_outputs_whole(tmp_path, monkeypatch):
    study = make_study(4)
    write_report(study, tmp_path, SPACE, png_backend="matplotlib")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real, calls = png._matplotlib_png, []

    def dies_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(png, "_matplotlib_png", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_report(study, tmp_path, SPACE, png_backend="matplotlib")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
