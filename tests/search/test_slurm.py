"""hpo.launcher slurm: the search as a job array under a real scheduler (scripts/setup_slurm.sh),
on a journal file and on PostgreSQL; cancelled tasks, a cancelled array, the rerun."""

import json
import shutil
import subprocess
import threading
import time

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from conftest import REPO, easy_images, sh, tiny_params, write_outputs, write_prepared
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import SlurmConfig
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.search.budget import SearchStopped, counted_trials
from retfound_hpo.search.slurm import batch_script
from retfound_hpo.search.study import make_storage
from retfound_hpo.search.workers import run_search
from retfound_hpo.training.inputs import load_cached

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage"),
]


def test_the_batch_script_carries_the_hpo_slurm_section(tmp_path):
    slurm = SlurmConfig(
        tasks=4,
        max_running=2,
        partition="gpu",
        time="2-00:00:00",
        gpus_per_task=1,
        cpus_per_task=8,
        memory="64G",
        account="eye-lab",
        extra=("--qos=high",),
        setup=("module load cuda/12.4",),
    )
    script = batch_script(slurm, "retfound-hpo-s", tmp_path, tmp_path, ["python", "-m", "w"])
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --account=eye-lab",
        "#SBATCH --qos=high",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/task_%a.log",
        "module load cuda/12.4",
        'exec python -m w --index "$SLURM_ARRAY_TASK_ID"',
    ]:
        assert line in script.splitlines()
    assert "--gres" not in batch_script(SlurmConfig(), "j", tmp_path, tmp_path, ["w"])


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        ({"launcher": "slurm"}, "hpo.storage: None is not allowed; with hpo.launcher slurm the "
         "tasks run on several nodes, where SQLite locks up over a network file system: use "
         "journal:///<file on a shared file system> or postgresql://user@host/db"),
        ({"launcher": "slurm", "storage": "sqlite:///x.db"}, "hpo.storage: 'sqlite:///x.db' is"),
        ({"slurm": {"gpus": 1}}, "hpo.slurm.gpus: unknown key; allowed keys here: account, "),
        ({"slurm": {"time": "a day"}}, "hpo.slurm.time: 'a day' is not allowed; use sbatch's"),
        ({"slurm": {"memory": "lots"}}, "hpo.slurm.memory: 'lots' is not allowed"),
        ({"slurm": {"tasks": 0}}, "hpo.slurm.tasks: 0 is not allowed; must be 1-1000"),
        ({"slurm": {"extra": ["--array=0-99"]}}, "hpo.slurm.extra[0]: '--array=0-99' is not"),
        ({"slurm": {"extra": ["qos high"]}}, "hpo.slurm.extra[0]: 'qos high' is not allowed"),
        ({"launcher": "cluster"}, "hpo.launcher: 'cluster' is not allowed; choose one of"),
    ],
)  # fmt: skip
def test_bad_launcher_params_are_one_line(tmp_path, edit, line):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    slurm = {**raw["hpo"]["slurm"], **edit.pop("slurm", {})}
    raw["hpo"].update(edit, slurm=slurm)
    if "launcher" not in edit and "storage" not in edit:
        raw["hpo"].update(launcher="slurm", storage="journal:///results/optuna/s.journal")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_a_time_limit_with_colons_is_read_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S hpo.slurm.time=10:00` writes `time: 10:00`; YAML 1.1 would read 600."""
    text = (REPO / "params.yaml").read_text().replace('time: "24:00:00"', "time: 10:00")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").hpo.slurm.time == "10:00"


def slurm_params(tmp_path, checkpoint, partition, n_train=60, **hpo):
    """Params of a tiny search as a 2-task array; the tasks read the prepared sets from disk."""
    prepared = tmp_path / "prepared"
    write_prepared(prepared / "train", easy_images(n_train))
    write_prepared(prepared / "val", easy_images(30, seed=1))
    hpo = {
        "launcher": "slurm",
        "storage": f"journal:///{tmp_path / 'shared' / 'study.journal'}",
        "heartbeat_seconds": 2,
        "pruner": "none",
        "slurm": {"tasks": 2, "partition": partition, "time": "10:00"},
        **hpo,
    }
    return tiny_params(tmp_path, checkpoint, data={"prepared_dir": str(prepared)}, hpo=hpo)


def data_of(params):
    folder = params.data.prepared_dir
    return load_cached(f"{folder}/train"), load_cached(f"{folder}/val")


def job_name(params) -> str:
    return f"retfound-hpo-{params.hpo.study_name}"


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"], capture_output=True)
    return out.stdout.decode().split()


def test_slurm_missing_partition_is_one_line_before_anything_runs(
    tmp_path, mae_checkpoint, slurm_cluster
):
    params = slurm_params(
        tmp_path, mae_checkpoint, "no-such-partition", study_name=f"nowhere_{time.time_ns()}"
    )
    with pytest.raises(ConfigError) as err:
        run_search(params, *data_of(params))
    assert str(err.value).startswith(
        "hpo.slurm: sbatch refuses the job: invalid partition specified: no-such-partition"
    )
    assert not jobs_named(job_name(params))
    assert not optuna.get_all_study_names(make_storage(params.hpo))  # no empty study left


def assert_whole(study: optuna.Study, n_trials: int) -> None:
    """Exactly n_trials counted and finished, numbers 0..n-1 once each, none RUNNING."""
    counted = counted_trials(study)
    assert len(counted) == n_trials
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))


@pytest.mark.slow  # a SLURM array that trains for real: the full test command runs it
@pytest.mark.timeout(300)
def test_slurm_demo_search_on_a_journal_via_dvc_exp_run(demo_pipeline, tmp_path, slurm_cluster):
    """Done-when: `dvc exp run -S hpo.launcher=slurm` finishes the demo search with the exact
    total and the same output files as the local run."""
    repo = tmp_path / "repo"
    shutil.copytree(demo_pipeline.repo, repo, symlinks=True)
    # The state right after the first `dvc repro`, whatever experiments ran in the shared repo.
    sh("git reset -q --hard $(git log --format=%H --grep='^run$' -n 1) && dvc checkout -f -q", repo)
    study_dir = "results/optuna/retfound_lora_search"
    local = {p.name for p in (demo_pipeline.first / study_dir).iterdir()}
    out = sh(
        "dvc exp run hpo-search -S hpo.launcher=slurm "
        "-S hpo.storage=journal:///results/optuna/cluster.journal -S hpo.slurm.tasks=2 "
        f"-S hpo.slurm.partition={slurm_cluster} -S hpo.slurm.time=10:00 2>&1",
        repo,
    )
    assert "submitted slurm job" in out and "trials 2 of 2 finished" in out
    hpo = load_params(repo / "params.yaml").hpo
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(repo / "results/optuna/cluster.journal"))
    )
    study = optuna.load_study(study_name=hpo.study_name, storage=storage)
    assert_whole(study, 2)
    assert {t.user_attrs["slurm_task"].split("_")[1] for t in study.trials} <= {"0", "1"}
    produced = {p.name for p in (repo / study_dir).iterdir()} - {"slurm"}
    hpo_outs = {"study.db", "artifacts", "study.pkl", "trials.csv", "config.json"}
    assert hpo_outs | {"best_params.json"} <= produced and produced - local == set()
    for name in ("trials.csv",):
        assert (
            list(pd.read_csv(repo / study_dir / name).columns)[:11]
            == list(pd.read_csv(demo_pipeline.first / study_dir / name).columns)[:11]
        )
    best = json.loads((repo / study_dir / "best_params.json").read_text())
    first = json.loads((demo_pipeline.first / study_dir / "best_params.json").read_text())
    assert set(best) == set(first)


def wait_for(predicate, timeout: float = 120, what: str = "it"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := predicate():
            return found
        time.sleep(0.3)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def load(params) -> optuna.Study:
    return optuna.load_study(study_name=params.hpo.study_name, storage=make_storage(params.hpo))


class Watcher:
    """The study as the test polls it, over one storage connection: a new connection per look
    took seconds on a loaded machine, long enough for a short trial to pass unseen."""

    def __init__(self, params):
        self.name, self.storage = params.hpo.study_name, make_storage(params.hpo)
        self.study = None

    def trials(self, *states: TrialState) -> list:
        if self.study is None:
            try:
                self.study = optuna.load_study(study_name=self.name, storage=self.storage)
            except KeyError:  # not created yet
                return []
        return self.study.get_trials(states=states or None)

    def mid_trial(self, but: int | None = None):
        """A task's trial in its 2nd epoch or later (other than trial `but`), or None."""
        running = self.trials(TrialState.RUNNING)
        started = [t for t in running if "slurm_task" in t.user_attrs and t.number != but]
        return next((t for t in started if t.user_attrs.get("epochs_run", 0) >= 1), None)


def frozen_mid_trial(watch: Watcher, find, what: str):
    """A running trial whose task is stopped (SIGSTOP) mid-trial: scancel's SIGCONT and SIGTERM
    then land in that trial, however loaded the machine (a short trial could otherwise finish
    before the signal arrives)."""
    while True:
        trial = wait_for(find, what=what)
        task = trial.user_attrs["slurm_task"]
        subprocess.run(["scancel", "--batch", "--signal=STOP", task], check=True)
        time.sleep(1)  # the signal travels through slurmctld and slurmd
        if watch.trials()[trial.number].state == TrialState.RUNNING:
            return trial
        subprocess.run(["scancel", "--batch", "--signal=CONT", task], check=True)  # too late


def in_thread(params, data):
    result = {}

    def run():
        try:
            result["out"] = run_search(params, *data)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.slow  # a SLURM array that trains for real: the full test command runs it
@pytest.mark.timeout(400)
def test_slurm_cancelled_task_then_array_then_rerun_on_postgresql(
    tmp_path, mae_checkpoint, slurm_cluster, postgres_url, request
):
    """scancel of one task mid-trial: no RUNNING trial, the other task takes its share;
    scancel of the whole array: one line, the study kept; the rerun finishes it exactly."""
    params = slurm_params(
        tmp_path,
        mae_checkpoint,
        slurm_cluster,
        n_train=200,
        n_trials=3,
        num_epochs=3,
        early_stopping_patience=3,
        storage=postgres_url,
        study_name=f"slurm_{time.time_ns()}",
    )
    data = data_of(params)
    make_storage(params.hpo)  # its tables, before this test and the stage both poll it
    thread, result = in_thread(params, data)
    request.addfinalizer(lambda: subprocess.run(["scancel", "-n", job_name(params)]))
    watch = Watcher(params)
    victim = frozen_mid_trial(watch, watch.mid_trial, "a task's trial in its 2nd epoch")
    subprocess.run(["scancel", victim.user_attrs["slurm_task"]], check=True)

    def one_done_and_another_running():
        return watch.trials(TrialState.COMPLETE) and watch.mid_trial(but=victim.number)

    frozen_mid_trial(watch, one_done_and_another_running, "a completed trial and another running")
    job = victim.user_attrs["slurm_task"].split("_")[0]
    subprocess.run(["scancel", job], check=True)
    thread.join(timeout=120)
    error = result.get("error")
    assert isinstance(error, SearchStopped), result
    assert str(error).startswith(f"slurm job {job} ended with ") and "\n" not in str(error)
    assert "the study is kept: rerun dvc repro to resume it" in str(error)

    study = load(params)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    cut = study.trials[victim.number]
    assert cut.state == TrialState.FAIL  # by the worker itself, on SLURM's SIGTERM
    assert cut.user_attrs["fail_reason"] == (
        "interrupted (SIGTERM: cancelled, preempted or out of time)"
    )
    assert victim.number not in {t.number for t in counted_trials(study)}
    done = [(t.number, t.params, t.value) for t in study.trials if t.state == TrialState.COMPLETE]
    assert done

    study, interrupted = run_search(params, *data)  # the rerun: a new array resumes the study
    assert not interrupted
    assert_whole(study, 3)
    again = {t.number: (t.params, t.value) for t in study.trials}
    assert all(again[n] == (p, v) for n, p, v in done)  # finished trials are not run again
    write_outputs(study, params)
    assert "postgres:***@127.0.0.1" in (params.hpo.study_dir / "config.json").read_text()


def test_the_stage_fails_the_trials_of_ended_tasks_and_judges_the_array(
    tmp_path, mae_checkpoint, monkeypatch
):
    """Without a scheduler: squeue's answers replayed. A task that ends mid-trial (a lost node:
    no SIGTERM handler ran) has its trial failed at once, uncounted; an array that ends with the
    budget unfinished is one line, the first task's own error where it stopped on one."""
    from retfound_hpo.search import cluster, slurm
    from retfound_hpo.search.study import open_study

    params = slurm_params(tmp_path, mae_checkpoint, "debug", n_trials=2, heartbeat_seconds=1)
    study = open_study(params.hpo, params.seed, {"inputs": 1})
    lost = study.ask()
    lost.set_user_attr("slurm_task", "7_0")
    answers = iter(
        [
            {0: ("RUNNING", "None"), 1: ("PENDING", "Resources")},
            {0: ("NODE_FAIL", "None"), 1: ("RUNNING", "None")},
            {0: ("NODE_FAIL", "None"), 1: ("FAILED", "NonZeroExitCode")},
        ]
    )
    monkeypatch.setattr(slurm, "task_states", lambda job: next(answers))
    run = tmp_path / "run"
    run.mkdir()
    states = cluster.wait_for_array("7", params.hpo, study, run)
    assert states[1] == ("FAILED", "NonZeroExitCode")
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL and counted_trials(study) == []
    assert trial.user_attrs["fail_reason"] == "slurm task 7_0 ended (NODE_FAIL) during the trial"
    with pytest.raises(SearchStopped, match=r"^slurm job 7 ended with 2 of 2 trial\(s\) still to"):
        cluster._verdict("7", states, params.hpo, study, run)
    (run / "task_1.json").write_text(json.dumps({"exit": 2, "error": "hpo.storage: x"}))
    with pytest.raises(SearchStopped, match=r"^slurm job 7: task 1 stopped: hpo.storage: x$"):
        cluster._verdict("7", states, params.hpo, study, run)
