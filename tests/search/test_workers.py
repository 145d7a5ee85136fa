"""Several workers on one study: exact trial totals, SQLite and PostgreSQL, a killed worker."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import (
    easy_images,
    fingerprint_of,
    run_main,
    tiny_params,
    write_outputs,
    write_prepared,
)
from retfound_hpo.search.budget import counted_trials
from retfound_hpo.search.strategy import FINISHED
from retfound_hpo.search.study import open_study
from retfound_hpo.search.workers import main as worker_main
from retfound_hpo.search.workers import run_search
from retfound_hpo.training.inputs import load_cached

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def worker_params(tmp_path, checkpoint, n_train=60, **hpo):
    """Params whose prepared sets exist on disk: worker processes load them from there."""
    prepared = tmp_path / "prepared"
    write_prepared(prepared / "train", easy_images(n_train))
    write_prepared(prepared / "val", easy_images(30, seed=1))
    hpo = {"heartbeat_seconds": 2, "pruner": "none", **hpo}
    return tiny_params(tmp_path, checkpoint, data={"prepared_dir": str(prepared)}, hpo=hpo)


def prepared(params):
    """The train and val sets that worker_params wrote, as the stage loads them."""
    folder = Path(params.data.prepared_dir)
    return load_cached(folder / "train"), load_cached(folder / "val")


def create_study(params) -> optuna.Study:
    """The study with its database, before anything else connects to it."""
    return open_study(params.hpo, params.seed, fingerprint_of(params, *prepared(params)))


def load(params) -> optuna.Study:
    return optuna.load_study(study_name=params.hpo.study_name, storage=params.hpo.storage_url)


def assert_exact_totals(study: optuna.Study, n_trials: int) -> None:
    counted = counted_trials(study)
    assert len(counted) == n_trials and all(t.state in FINISHED for t in counted)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicate, none missing


def pids(study: optuna.Study) -> set[str]:
    return {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}


@pytest.mark.slow  # worker processes that train for real: the full test command runs it
def test_local_workers_run_exactly_n_trials(tmp_path, mae_checkpoint):
    # Three workers on two cores: they contend for the slot lock and the cores. Trials of a few
    # seconds: long against the gap between the workers' start-ups.
    params = worker_params(tmp_path, mae_checkpoint, n_train=400, n_trials=5, n_workers=3)
    study, interrupted = run_search(params, *prepared(params))
    assert not interrupted
    assert_exact_totals(study, 5)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(pids(study)) >= 2  # the trials really were shared out


@pytest.mark.slow  # worker processes that train for real: the full test command runs it
def test_raising_n_trials_resumes_with_several_workers(tmp_path, mae_checkpoint):
    params = worker_params(tmp_path, mae_checkpoint, n_trials=2)  # in this process
    first = [(t.number, t.params) for t in run_search(params, *prepared(params))[0].trials]
    params = worker_params(tmp_path, mae_checkpoint, n_trials=4, n_workers=2)
    study, _ = run_search(params, *prepared(params))
    assert_exact_totals(study, 4)
    assert len(pids(study) - {f"{socket.gethostname()}:{os.getpid()}"}) >= 1  # spawned ones ran
    assert [(t.number, t.params) for t in study.trials[:2]] == first


def wait_for_running_trial(params, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception):  # the study may not exist yet
            for t in load(params).get_trials(states=(TrialState.RUNNING,)):
                if "worker" in t.user_attrs and t.user_attrs.get("epochs_run", 0) >= 1:
                    return t
        time.sleep(0.2)
    raise AssertionError("no trial got to its second epoch")


@pytest.mark.slow  # worker processes that train for real: the full test command runs it
@pytest.mark.parametrize("retries", [0, 1])
def test_sigkill_of_one_worker_leaves_the_others_and_the_totals_right(
    tmp_path, mae_checkpoint, retries
):
    params = worker_params(
        tmp_path,
        mae_checkpoint,
        n_train=400,
        n_trials=4,
        n_workers=2,
        num_epochs=4,
        early_stopping_patience=4,
        retry_failed_trials=retries,
    )
    create_study(params)
    result, data = {}, prepared(params)
    search = threading.Thread(target=lambda: result.update(out=run_search(params, *data)))
    search.start()
    victim = wait_for_running_trial(params)
    host, _, pid = victim.user_attrs["worker"].rpartition(":")
    assert host == socket.gethostname()
    os.kill(int(pid), signal.SIGKILL)
    search.join(timeout=300)
    assert not search.is_alive()

    study, interrupted = result["out"]
    assert not interrupted
    assert_exact_totals(study, 4)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL
    assert (
        dead.user_attrs["fail_reason"]
        == f"worker {victim.user_attrs['worker']} died (killed or crashed)"
    )
    survivors = pids(study) - {victim.user_attrs["worker"]}
    assert survivors and all(
        t.state == TrialState.COMPLETE for t in counted_trials(study) if t.number != victim.number
    )
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    if retries:  # the same parameters again, counted once
        (again,) = retried
        assert again.params == dead.params and again.state == TrialState.COMPLETE
        assert "fail_reason" not in again.user_attrs or again.user_attrs["fail_reason"] is None
    else:
        assert not retried


def test_worker_command_needs_an_existing_study(tmp_path, mae_checkpoint, capsys):
    params = worker_params(tmp_path, mae_checkpoint)
    code, stderr = run_main(worker_main, ["--params", str(tmp_path / "params.yaml")], capsys)
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: hpo.study_name: no study")
    assert not load_or_none(params)


def load_or_none(params):
    try:
        return load(params)
    except KeyError:
        return None


# --- PostgreSQL: several machines share a server; here, processes share one on loopback ----------


@pytest.mark.slow  # worker processes that train for real: the full test command runs it
def test_postgres_workers_and_a_joining_worker_run_exactly_n_trials(
    tmp_path, mae_checkpoint, postgres_url
):
    params = worker_params(
        tmp_path,
        mae_checkpoint,
        n_train=400,  # trials of a few seconds: the test sees one running
        n_trials=6,
        n_workers=2,
        storage=postgres_url,
        study_name=f"pg_{os.getpid()}_{time.time_ns()}",
    )
    # "Another machine": a worker started by hand with the same params joins once the study
    # exists; the study's two local workers and it share the six trials.
    create_study(params)
    result, data = {}, prepared(params)
    search = threading.Thread(target=lambda: result.update(out=run_search(params, *data)))
    search.start()
    wait_for_running_trial(params)
    joiner = subprocess.run(
        [
            sys.executable,
            "-m",
            "retfound_hpo.search.workers",
            "--params",
            str(tmp_path / "params.yaml"),
            "--index",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    search.join(timeout=300)
    assert joiner.returncode == 0, joiner.stderr[-2000:]
    study, interrupted = result["out"]
    assert not interrupted
    assert_exact_totals(study, 6)

    write_outputs(study, params)  # study.db: a SQLite copy, for export-report and DVC
    snapshot = optuna.load_study(
        study_name=params.hpo.study_name, storage=f"sqlite:///{params.hpo.study_dir / 'study.db'}"
    )
    assert [t.params for t in snapshot.trials] == [t.params for t in study.trials]
    config = (params.hpo.study_dir / "config.json").read_text()
    assert "postgres:***@127.0.0.1" in config and "pw-of-test" not in config


def test_each_worker_gets_its_own_gpu_or_a_share_of_the_cores(monkeypatch):
    from retfound_hpo.search.local import visible_gpus, worker_env

    envs = [worker_env(i, 4, ["2", "5"], cpus=16) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert {e["RETFOUND_HPO_THREADS"] for e in envs} == {"4"}
    cpu = worker_env(1, 2, [], cpus=2)
    assert cpu["RETFOUND_HPO_THREADS"] == cpu["OMP_NUM_THREADS"] == "1"
    assert "TQDM_DISABLE" not in worker_env(0, 2, [], cpus=2)  # one progress bar, worker 0's
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    assert visible_gpus() == ["3", "7"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_silent_worker_on_another_host_is_failed_by_heartbeat_and_retried(tmp_path, mae_checkpoint):
    from retfound_hpo.search.study_files import trials_table

    params = worker_params(
        tmp_path, mae_checkpoint, n_trials=2, retry_failed_trials=1, heartbeat_seconds=1
    )
    study = create_study(params)
    lost = study.ask()  # running on a machine that then vanished: one heartbeat, then silence
    lost.suggest_categorical("lora_r", [4, 8])
    lost.set_user_attr("worker", "other-host:4242")
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(2.5)  # two heartbeat intervals

    study, _ = run_search(params, easy_images(60), easy_images(30, seed=1))
    assert_exact_totals(study, 2)
    assert study.trials[0].state == TrialState.FAIL
    (again,) = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert again.state == TrialState.COMPLETE and again.params["lora_r"] == lost.params["lora_r"]
    table = trials_table(study, params.hpo)
    assert table.loc[0, "fail_reason"] == (
        "worker stopped sending heartbeats (killed or crashed) (not counted toward hpo.n_trials)"
    )


def test_slot_lock_makes_a_second_worker_wait(tmp_path):
    """SQLite's slot lock (a file lock beside the database) is held by one worker at a time."""
    from retfound_hpo.search.slots import SlotLock

    url = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = SlotLock(url, "s"), SlotLock(url, "s")
    first.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (second.acquire(), got.set()))
    waiter.start()
    assert not got.wait(0.5)  # blocked while the first holds it
    first.release()
    assert got.wait(10)
    waiter.join()
    second.close()
    first.close()


def test_each_trial_is_counted_and_created_under_the_slot_lock(
    tmp_path, mae_checkpoint, monkeypatch
):
    """The exact total rests on "count the trials, create the next one" being one step: every
    trial a worker creates is created while it holds the lock, after counting under it."""
    import retfound_hpo.search.workers as workers

    params = worker_params(tmp_path, mae_checkpoint, n_trials=2)
    held, created, counted = [False], [], []

    class RecordingLock(workers.SlotLock):
        def acquire(self):
            super().acquire()
            held[0] = True

        def release(self):
            held[0] = False
            super().release()

    real_ask = optuna.Study.ask
    real_budget = workers.budget

    def ask(self, *args, **kwargs):  # where Optuna creates the next trial
        created.append(held[0])
        return real_ask(self, *args, **kwargs)

    def budget(study):
        counted.append(held[0])
        return real_budget(study)

    monkeypatch.setattr(workers, "SlotLock", RecordingLock)
    monkeypatch.setattr(workers, "budget", budget)
    monkeypatch.setattr(optuna.Study, "ask", ask)
    study, _ = run_search(params, *prepared(params))
    assert len(study.trials) == 2 and created == [True, True]
    assert counted and all(counted[-3:])  # the worker's counts, each under the lock
