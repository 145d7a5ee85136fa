"""Storages that suit clusters (journal file, PostgreSQL by its documented URL), and what the
search leaves behind when something goes wrong: one line, nothing overwritten, nothing empty."""

import os
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from conftest import (
    REPO,
    easy_images,
    fingerprint_of,
    run_script,
    tiny_params,
    write_outputs,
    write_prepared,
)
from retfound_hpo.core.errors import ConfigError, UserError
from retfound_hpo.search.budget import counted_trials
from retfound_hpo.search.liveness import fail_dead_trials
from retfound_hpo.search.study import make_storage, open_study
from retfound_hpo.search.workers import main as worker_main
from retfound_hpo.search.workers import run_search

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage"),
]


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def fast(tmp_path, checkpoint, **hpo):
    return tiny_params(tmp_path, checkpoint, hpo={"n_trials": 1, "num_epochs": 1, **hpo})


def studies(hpo) -> dict[str, int]:
    """Study name -> number of trials, in the storage `hpo` names."""
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(make_storage(hpo))}


def test_a_silent_trial_on_a_journal_is_failed_by_its_lease_and_not_counted(
    tmp_path, mae_checkpoint, data
):
    """Optuna's journal has no heartbeat: a lease file per running trial stands in for it."""
    journal = tmp_path / "study.journal"
    params = fast(tmp_path, mae_checkpoint, storage=f"journal:///{journal}", heartbeat_seconds=5)
    study = open_study(params.hpo, params.seed, fingerprint_of(params, *data))
    lost = study.ask()
    lost.set_user_attr("worker", "other-host:4242")
    study._storage.record_heartbeat(lost._trial_id)
    lease = journal.with_name("study.journal.leases") / str(lost._trial_id)
    fail_dead_trials(study, 5)
    assert study.trials[0].state == TrialState.RUNNING  # a fresh lease: alive
    old = time.time() - 11  # more than two intervals ago
    os.utime(lease, (old, old))
    fail_dead_trials(study, 5)
    assert study.trials[0].state == TrialState.FAIL and counted_trials(study) == []
    assert not lease.exists()  # a finished trial's lease is cleared away


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_other_inputs_are_kept_aside_on_every_storage(
    tmp_path, mae_checkpoint, data, kind, request
):
    """The fingerprint works the same on the shared storages as on study.db."""
    url = (
        f"journal:///{tmp_path / 'study.journal'}"
        if kind == "journal"
        else request.getfixturevalue("postgres_url")
    )
    name = f"fp_{time.time_ns()}"
    params = fast(tmp_path, mae_checkpoint, storage=url, study_name=name)
    kappa = fast(tmp_path, mae_checkpoint, storage=url, study_name=name, metric="kappa")
    first = open_study(params.hpo, params.seed, fingerprint_of(params, *data))
    first.enqueue_trial({"lora_r": 4})  # a trial, so that it is kept rather than dropped
    attrs = first.user_attrs
    open_study(kappa.hpo, kappa.seed, fingerprint_of(kappa, *data))
    held = {k: v for k, v in studies(params.hpo).items() if k.startswith(name)}
    assert held == {name: 0, f"{name}@{attrs['fingerprint_id']}": 1}
    back = open_study(params.hpo, params.seed, fingerprint_of(params, *data))
    assert len(back.trials) == 1 and back.user_attrs == attrs


def test_the_documented_postgresql_url_works_and_failures_are_one_line(
    tmp_path, mae_checkpoint, postgres_url
):
    assert postgres_url.startswith("postgresql://")  # README's form: psycopg 3
    params = fast(tmp_path, mae_checkpoint, storage=postgres_url)
    assert isinstance(make_storage(params.hpo), optuna.storages.RDBStorage)
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    wrong = postgres_url.replace(":pw-of-test@", ":not-it@")
    for url, why in [
        (wrong, "password authentication failed"),
        (f"postgresql://u:secret@127.0.0.1:{int(port) + 1}/db", "refused"),
        ("postgresql://u:secret@db-host.invalid/optuna", ""),
    ]:
        hpo = fast(tmp_path, mae_checkpoint, storage=url).hpo
        with pytest.raises(ConfigError) as err:
            make_storage(hpo)
        line = str(err.value)
        assert line.startswith("hpo.storage: postgresql://") and "cannot be reached" in line
        assert why in line and "\n" not in line
        assert "not-it" not in line and "secret" not in line and ":***@" in line


def test_a_study_db_that_is_not_a_database_is_one_line_and_left_alone(
    tmp_path, mae_checkpoint, data
):
    for storage in (None, f"journal:///{tmp_path / 'study.journal'}"):  # itself, or a snapshot
        params = fast(tmp_path, mae_checkpoint, storage=storage)
        db = params.hpo.study_dir / "study.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_text("my notes, not a database\n")
        with pytest.raises(ConfigError, match=r"^hpo.output_dir: .*study.db is not an") as err:
            run_search(params, *data)
        assert "file is not a database" in str(err.value)
        assert db.read_text() == "my notes, not a database\n"


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, mae_checkpoint, data):
    (tmp_path / "optuna").write_text("a file where the folder goes")
    params = fast(tmp_path, mae_checkpoint)
    with pytest.raises(ConfigError, match=r"^hpo.output_dir: cannot create folder .*optuna/"):
        run_search(params, *data)


def test_a_journal_study_and_switching_storage_never_overwrite_the_local_study_or_kept_ones(
    tmp_path, mae_checkpoint, data
):
    local = fast(tmp_path, mae_checkpoint)
    (first,) = run_search(local, *data)[0].trials
    optuna.copy_study(  # a study kept aside before (other inputs)
        from_study_name=local.hpo.study_name,
        from_storage=make_storage(local.hpo),
        to_storage=make_storage(local.hpo),
        to_study_name=f"{local.hpo.study_name}@0badcafe",
    )
    before = studies(local.hpo)
    assert len(before) == 2
    journal = tmp_path / "shared" / "study.journal"  # Optuna's journal file, on a shared disk
    shared = fast(tmp_path, mae_checkpoint, storage=f"journal:///{journal}")
    study, _ = run_search(shared, *data)
    assert journal.is_file() and [t.state for t in study.trials] == [TrialState.COMPLETE]
    write_outputs(study, shared)  # the snapshot goes into study.db beside the local study
    out = shared.hpo.study_dir
    assert {p.name for p in out.iterdir()} >= {
        *("study.db", "config.json", "trials.csv", "best_params.json", "study.pkl", "artifacts")
    }
    snapshot = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{out}/study.db")
    assert [t.params for t in snapshot.trials] == [t.params for t in study.trials]
    assert snapshot.user_attrs["snapshot_of"] == f"journal:///{journal}"
    after = studies(local.hpo)
    name = local.hpo.study_name
    (kept,) = set(after) - set(before)  # the local study, kept aside, trials intact
    assert kept.startswith(f"{name}@") and after[kept] == 1 and after[name] == 1
    assert {k: v for k, v in after.items() if k != kept} == before
    # Back to the local storage: the local study resumes (nothing to run), the copy is kept.
    (again,) = run_search(local, *data)[0].trials
    assert (again.params, again.value) == (first.params, first.value)
    assert studies(local.hpo)[f"{kept}-snapshot"] == 1


def test_a_failure_before_any_trial_leaves_no_empty_study(tmp_path, mae_checkpoint, data):
    """E.g. a bad checkpoint (the preflight fails): neither an empty `<study>@<id>` once it is
    fixed, nor a database created for nothing."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(UserError):
        run_search(fast(tmp_path, bad), *data)
    db = tmp_path / "optuna" / "retfound_lora_search" / "study.db"
    assert not db.exists()
    run_search(fast(tmp_path, mae_checkpoint), *data)  # a study with a trial
    with pytest.raises(UserError):
        run_search(fast(tmp_path, bad), *data)
    params = fast(tmp_path, mae_checkpoint)
    (trial,) = run_search(params, *data)[0].trials  # the study with its trial resumes
    assert list(studies(params.hpo)) == [params.hpo.study_name]
    # A run of other inputs killed before its first trial (nothing could clean up after it):
    # its empty study is not kept aside when the inputs change back.
    other = fast(tmp_path, mae_checkpoint, metric="kappa")
    open_study(other.hpo, other.seed, fingerprint_of(other, *data))
    (again,) = run_search(params, *data)[0].trials
    assert (again.params, again.value) == (trial.params, trial.value)
    assert list(studies(params.hpo)) == [params.hpo.study_name]


def test_worker_command_one_line_errors_leave_nothing_behind(tmp_path, mae_checkpoint, capsys):
    write_prepared(tmp_path / "prepared/train", easy_images(20))
    write_prepared(tmp_path / "prepared/val", easy_images(10, seed=1))
    params = tiny_params(
        tmp_path,
        mae_checkpoint,
        data={"prepared_dir": str(tmp_path / "prepared")},
        hpo={"storage": f"journal:///{tmp_path / 'j' / 'x.journal'}"},
    )
    for argv, line in [
        (["--params", str(tmp_path)], f"error: --params {tmp_path}: is a folder; give the"),
        (["--params", str(tmp_path / "params.yaml")], "error: hpo.study_name: no study"),
    ]:
        with pytest.raises(SystemExit) as end:
            worker_main(argv)
        assert end.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(line) and "Traceback" not in "".join(err)
    assert not (tmp_path / "j" / "x.journal").exists()  # no empty storage for an unknown study
    assert not params.hpo.study_dir.joinpath("study.db").exists()


def stage_project(tmp_path, checkpoint, **hpo) -> Path:
    """A folder that the hpo-search stage runs in: params.yaml and prepared images."""
    write_prepared(tmp_path / "data/prepared/train", easy_images(60))
    write_prepared(tmp_path / "data/prepared/val", easy_images(30, seed=1))
    tiny_params(tmp_path, checkpoint, hpo={"output_dir": "optuna", **hpo})
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["data"] = {"prepared_dir": "data/prepared"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "optuna" / "retfound_lora_search"


def test_ctrl_c_in_the_last_trial_is_one_line_and_the_rerun_finishes_the_budget(
    tmp_path, mae_checkpoint, monkeypatch, capsys
):
    import retfound_hpo.training.hparams as hparams_module

    out = stage_project(tmp_path, mae_checkpoint, num_epochs=1, n_trials=1)
    stage = REPO / "stages/hpo_search.py"  # as DVC runs it, in this process
    real_fit, calls = hparams_module.fit, []

    def fit_interrupted_in_the_last_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the preflight, then trial 0: the last (and only) one
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", fit_interrupted_in_the_last_trial)
    code, err = run_script(stage, tmp_path, monkeypatch, capsys)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: a trial cut off is recorded FAIL")
    table = pd.read_csv(out / "trials.csv")  # written also after Ctrl-C
    assert list(table["state"]) == ["FAIL"]
    assert table.loc[0, "fail_reason"] == ("interrupted (Ctrl-C) (not counted toward hpo.n_trials)")
    monkeypatch.undo()
    code, _ = run_script(stage, tmp_path, monkeypatch, capsys)
    assert code == 0
    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["FAIL", "COMPLETE"]  # the budget, exactly


def test_a_worker_whose_trial_is_failed_under_it_goes_on(
    tmp_path, mae_checkpoint, data, monkeypatch, caplog
):
    """Another worker fails a running trial whose heartbeat came late (Optuna's "already
    finished" race): its worker cannot record the end; it logs that and runs the budget."""
    import retfound_hpo.training.hparams as hparams_module
    from retfound_hpo.search.liveness import fail_trial

    params = fast(tmp_path, mae_checkpoint)
    real_fit, calls = hparams_module.fit, []

    def fit_while_another_worker_fails_the_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # trial 0 (call 0 is the preflight's)
            study = optuna.load_study(study_name="retfound_lora_search", storage=make_storage(
                params.hpo))  # fmt: skip
            (running,) = study.get_trials(states=(TrialState.RUNNING,))
            fail_trial(study, running, "worker stopped sending heartbeats (killed or crashed)")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", fit_while_another_worker_fails_the_trial)
    study, _ = run_search(params, *data)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert [t.number for t in counted_trials(study)] == [1]
    assert "its trial was failed by another worker while it ran" in caplog.text
