"""Each figure of the report says which trials it rests on; a fit (parameter importance, the
contour's surface) is never drawn from a handful of trials without saying so."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from retfound_hpo.reporting.plan import MIN_FIT_TRIALS, plan_plots, pruned_as_complete
from retfound_hpo.reporting.report import write_report

optuna.logging.set_verbosity(optuna.logging.ERROR)
SPACE = {
    "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}
DISTRIBUTIONS = {
    "lora_r": CategoricalDistribution([4, 8, 16]),
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
}


def study_of(n_complete: int, n_pruned: int) -> optuna.Study:
    """Completed trials (value = val_accuracy) and pruned ones that recorded their best
    val_accuracy before pruning, like the demo's search."""
    study = optuna.create_study(study_name="s", direction="maximize")
    for i in range(n_complete + n_pruned):
        params = {"lora_r": [4, 8, 16][i % 3], "learning_rate": 1e-4 * 10 ** (i / 10)}
        value = 50.0 + i
        pruned = i >= n_complete
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else value,
                params=params,
                distributions=DISTRIBUTIONS,
                intermediate_values={1: value - 5, 2: value},
                user_attrs={"val_accuracy": value, "epochs_run": 2},
            )
        )
    return study


def plans(study, value_attr="val_accuracy"):
    return {p.name: p for p in plan_plots(study, "best_val_acc", value_attr)}


def test_a_fit_over_few_completed_trials_uses_the_pruned_ones_and_says_so():
    plan = plans(study_of(3, 9))
    importance = plan["param_importance"]
    assert importance.unavailable is None and importance.with_pruned
    assert importance.basis.startswith("3 completed trials and 9 pruned trials, each pruned")
    assert plan["contour"].with_pruned
    assert len(pruned_as_complete(study_of(3, 9), "val_accuracy").trials) == 12
    # the plots that are not fits show what completed, and warn that it is little
    assert plan["slice_plots"].basis.startswith("3 completed trials (fewer than 10")
    assert not plan["slice_plots"].with_pruned
    assert plan["timeline"].basis == "all 12 trials, whatever their state"
    assert plan["intermediate_values"].basis.startswith("the 12 trials that reported epochs")


def test_a_fit_is_skipped_with_a_sentence_when_even_pruned_trials_are_too_few():
    plan = plans(study_of(3, 2))
    assert plan["param_importance"].unavailable.startswith(
        f"fitting it needs at least {MIN_FIT_TRIALS} trials with a value; this study has 3 "
        "completed and 2 pruned"
    )
    assert not plan["param_importance"].with_pruned
    # without the attribute pruned trials keep their values to themselves: skipped too
    assert plans(study_of(3, 9), value_attr=None)["param_importance"].unavailable


def test_enough_completed_trials_need_no_pruned_ones():
    plan = plans(study_of(MIN_FIT_TRIALS, 5))
    assert plan["param_importance"].basis == f"{MIN_FIT_TRIALS} completed trials"
    assert not plan["param_importance"].with_pruned


def test_the_report_names_the_trials_each_figure_rests_on(tmp_path, monkeypatch):
    """The importance is really computed over the 12 values, and the report says so."""
    seen = []
    real = optuna.visualization.plot_param_importances

    def recording(study, **kwargs):
        seen.append(len(study.get_trials(states=(TrialState.COMPLETE,))))
        return real(study, **kwargs)

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", recording)
    path = write_report(
        study_of(3, 9), tmp_path, SPACE, png_backend="matplotlib", metric="accuracy"
    )
    text = path.read_text()
    assert seen == [12]
    importance = text.split("### Parameter importance\n", 1)[1].split("###", 1)[0]
    assert "Rests on 3 completed trials and 9 pruned trials" in importance
    assert "Not available" not in importance
    for title in ("Optimization history", "Slice plots", "Timeline"):
        assert "Rests on " in text.split(f"### {title}\n", 1)[1].split("###", 1)[0], title
    top = text.split("## Top 3 completed trials\n", 1)[1].split("\n## ", 1)[0]
    assert "Only 3 trial(s) completed: this ranking, its mean and its spread rest on 3" in top


@pytest.mark.parametrize("n_complete", [1, 2])
def test_one_or_two_completed_trials_never_get_an_importance(tmp_path, n_complete):
    path = write_report(study_of(n_complete, 0), tmp_path, SPACE, png_backend="matplotlib")
    importance = path.read_text().split("### Parameter importance\n", 1)[1].split("###", 1)[0]
    assert importance.strip().startswith("Not available:")
