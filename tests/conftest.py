"""Shared fixtures: small synthetic inputs made in tmp_path; no network, no downloads."""

import os
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Under pytest-xdist the cores are shared by the workers: each (and what it starts) gets its
# share of threads, set before torch is imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(_THREADS)

# Tests that share a session fixture run in one xdist worker, so it is built once.
SHARED = {"demo_pipeline": "pipeline", "postgres_url": "postgres", "slurm_cluster": "slurm"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, group in SHARED.items():
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(group))
                break


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mae_checkpoint(tmp_path):
    """A random demo-size encoder saved in RETFound's MAE layout (norm, mask_token, decoder_*)."""
    from retfound_hpo.core.params import ModelConfig
    from retfound_hpo.training.pretrain_demo import MaskedAutoencoder

    torch.manual_seed(0)
    path = tmp_path / "mae.pth"
    torch.save({"model": MaskedAutoencoder(ModelConfig()).retfound_state_dict()}, path)
    return path


def fundus_like(rng: np.random.Generator, size: int = 64, border: int = 8) -> np.ndarray:
    """A bright disc on a black border, (size, size + 2*border, 3) uint8."""
    h, w = size, size + 2 * border
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (size / 2 - 1) ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[disc] = rng.integers(60, 200, size=(int(disc.sum()), 3))
    return img


def tiny_params(tmp_path, checkpoint, **sections):
    """Params for fast tests: 32 px inputs, two trials of two epochs, outputs under tmp_path."""
    import yaml

    from retfound_hpo.core.params_yaml import load_params

    data = {
        "seed": 0,
        "model": {"checkpoint": str(checkpoint), "input_size": 32},
        "train": {"eval_batch_size": 64},
        "hpo": {
            "output_dir": str(tmp_path / "optuna"),
            "n_trials": 2,
            "num_epochs": 2,
            "early_stopping_patience": 2,
            "sampler_startup_trials": 2,
            "search_space": {
                "lora_r": {"type": "categorical", "choices": [4, 8]},
                "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                "batch_size": {"type": "categorical", "choices": [16]},
                "dropout": {"type": "float", "low": 0.1, "high": 0.5},
            },
        },
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_params(path)


def easy_images(n: int, seed: int = 0, size: int = 32):
    """Images whose grade is written in their brightness: learnable in a couple of epochs."""
    from retfound_hpo.training.inputs import CachedImages

    rng = np.random.default_rng(seed)
    grades = np.arange(n) % 5
    images = grades[:, None, None, None] * 50 + rng.integers(0, 20, (n, size, size, 3))
    return CachedImages(images.astype(np.uint8), grades)


def write_prepared(folder, images) -> None:
    """Save a CachedImages as a prepared set (images.npy + index.csv), as prepare-split does."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", np.asarray(images.images))
    ids = [f"img{i}" for i in range(len(images))]
    pd.DataFrame({"id": ids, "grade": images.grades, "patient": ids, "path": ids}).to_csv(
        folder / "index.csv", index=False
    )


def repo_params(tmp_path: Path, **edits) -> Path:
    """The repository's params.yaml with `section__key=value` edits, written to tmp_path."""
    import yaml

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cmd(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell command with the venv's tools on PATH; its exit status and output."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)


def sh(cmd: str, cwd: Path) -> str:
    """Run a shell command (see run_cmd); fail the test with its output unless it succeeds."""
    proc = run_cmd(cmd, cwd)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def follow_captured_stderr() -> None:
    """Log handlers keep the stderr they were created with (Optuna's own; the stage runner's
    logging.basicConfig on the root logger): in process, an earlier test's captured stream,
    closed by now. Point them at this test's."""
    import logging

    for name in ("", "optuna"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it would flush the closed one
                if hasattr(handler.formatter, "stream"):  # colorlog's asks it if it is a tty
                    handler.formatter.stream = sys.stderr


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run a console command's main(argv) in this process: its exit code and stderr. Seconds
    faster than a subprocess, which imports torch and the rest again; use a subprocess only
    where the process itself matters."""
    capsys.readouterr()
    follow_captured_stderr()
    code, message = 0, ""
    try:
        main(argv)
    except SystemExit as stop:
        if isinstance(stop.code, str):  # sys.exit("...") prints it and exits 1
            code, message = 1, stop.code + "\n"
        else:
            code = stop.code or 0
    return code, capsys.readouterr().err + message


def run_script(script: Path, cwd: Path, monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """Run a stage script (or a console command's module) in this process, as `python script
    argv...` from `cwd` would (see run_main)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    return run_main(lambda _: runpy.run_path(str(script), run_name="__main__"), [], capsys)


def copy_repo(dest: Path) -> None:
    """The repository's tracked files and the demo backbone, as a fresh clone has them."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files + ["models/demo_backbone/checkpoint.pth"]:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)


def unavailable(what: str, hint: str, required_by: str) -> None:
    """Skip a test whose tool is missing; fail it where CI sets the `required_by` variable, so
    that CI never goes green on a skipped capability."""
    if os.environ.get(required_by):
        pytest.fail(f"{what} is required here ({required_by} is set): {hint}")
    pytest.skip(f"{what} not available: {hint}")


def find_postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def postgres_unavailable(reason: str):
    unavailable(
        "PostgreSQL",
        f"{reason} (bash scripts/setup.sh --test installs it)",
        "RETFOUND_HPO_REQUIRE_POSTGRES",
    )


POSTGRES_PASSWORD = "pw-of-test"


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 for the session, in README's documented URL
    form (postgresql://, psycopg 3); TCP logins need the password."""
    if url := os.environ.get("RETFOUND_HPO_TEST_POSTGRES"):
        yield url
        return
    initdb, pg_ctl = find_postgres_bin("initdb"), find_postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        postgres_unavailable("initdb/pg_ctl not found")
    # The server refuses to run as root: run it as the postgres user where we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="retfound-pg-"))
    folder.chmod(0o777)
    data = folder / "data"
    (folder / "pw").write_text(POSTGRES_PASSWORD)
    (folder / "pw").chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust"]
            + ["--auth-host=scram-sha-256", f"--pwfile={folder / 'pw'}"],
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(folder / "log"), "start"]
            + ["-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        postgres_unavailable(f"the server did not start: {getattr(err, 'stderr', err)}")
    yield f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{port}/postgres"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A SLURM controller that answers and a node that takes jobs (scripts/setup_slurm.sh);
    returns a partition to submit to."""
    hint = "bash scripts/setup_slurm.sh starts a single-node SLURM (needs root or sudo)"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        unavailable("SLURM", f"no sinfo/sbatch: {hint}", "RETFOUND_HPO_REQUIRE_SLURM")
    try:  # scontrol ping first: sinfo without a controller retries for ~10 s
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        nodes = subprocess.run(
            ["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        unavailable("SLURM", f"scontrol/sinfo did not answer: {hint}", "RETFOUND_HPO_REQUIRE_SLURM")
    usable = [
        line.split()[0].rstrip("*")
        for line in nodes.stdout.splitlines()
        if line.split()[1:] and line.split()[1].startswith(("idle", "mixed", "alloc"))
    ]
    if ping.returncode != 0 or not usable:
        state = (ping.stdout + nodes.stdout + nodes.stderr).strip().replace("\n", "; ")
        unavailable("SLURM", f"no usable node ({state}): {hint}", "RETFOUND_HPO_REQUIRE_SLURM")
    return usable[0]


# The demo pipeline at test size: 100 + 20 images, two trials of two epochs, two epochs of
# train-best. Every end-to-end test shares one run of it (see demo_pipeline).
TINY = {
    "data": {
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "demo": {"n_domain_a": 100, "n_domain_b": 20},
    },
    "hpo": {"n_trials": 2, "num_epochs": 2, "sampler_startup_trials": 2},
    "train_best": {"epochs": 2},
}


def merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


@dataclass
class DemoPipeline:
    """One `dvc repro` of the demo at test size, in a fresh clone-like copy of the repository.

    `first` is a copy of the repository right after the first `dvc repro` (read-only: tests
    look at what a new user's first run writes); `repo` is where experiments run, one after
    another, via `experiments()`."""

    repo: Path
    first: Path
    first_status: str  # `dvc status` right after the first run
    _experiments: dict | None = None

    def experiments(self) -> dict:
        """Run, once per session, the experiments the end-to-end tests compare: the study
        resumed to 3 trials (committed as HEAD, train-best for 2 epochs), then train-best for 3
        epochs (`long`). Returns the trials.csv before and after the resume."""
        if self._experiments is None:
            import pandas as pd

            trials = self.repo / "results/optuna/retfound_lora_search/trials.csv"
            before = pd.read_csv(trials)
            sh("dvc exp run -S hpo.n_trials=3", self.repo)
            after = pd.read_csv(trials)
            sh("git add -A && git commit -qm resumed", self.repo)
            sh("dvc exp run -n long -S train_best.epochs=3", self.repo)
            self._experiments = {"trials_before": before, "trials_after": after}
        return self._experiments


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory) -> DemoPipeline:
    """The shared end-to-end run: copy the repository, shrink params.yaml to TINY, commit,
    `dvc repro`, commit the results."""
    import yaml

    repo = tmp_path_factory.mktemp("demo") / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q && git add -A && git commit -qm init", repo)
    sh("dvc repro", repo)
    status = sh("dvc status", repo)
    first = repo.parent / "first"
    shutil.copytree(repo, first, symlinks=True, ignore=shutil.ignore_patterns(".dvc"))
    sh("git add -A && git commit -qm run", repo)
    return DemoPipeline(repo, first, status)


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, which kaleido and the offline-render tests drive."""
    path = Path(shutil.which("chromium") or "/usr/bin/chromium")
    if not path.is_file():
        unavailable(
            "Chromium", "bash scripts/setup.sh installs it", "RETFOUND_HPO_REQUIRE_CHROMIUM"
        )
    return path


# The pipeline's functions take the params sections they use; tests build whole Params.
def run_prepare(params):
    """prepare-split's work for `params`, as the stage calls it."""
    from retfound_hpo.data.prepare import prepare_split

    return prepare_split(
        params.data,
        params.evaluate.datasets,
        input_size=params.model.input_size,
        num_classes=params.model.num_classes,
        seed=params.seed,
    )


def fingerprint_of(params, train, val):
    from retfound_hpo.search.fingerprint import study_fingerprint

    return study_fingerprint(params.model, params.train, params.hpo, params.seed, train, val)


def write_outputs(study, params):
    """The hpo-search stage's output files for `study`, as the stage writes them."""
    import dataclasses

    from retfound_hpo.search.study_files import write_search_outputs

    return write_search_outputs(study, params.hpo, dataclasses.asdict(params))


def train_with(hparams, params, epochs, patience, train, val, on_epoch_end=None, progress=None):
    """train_with_hparams with the model, train, seed and metric of `params`."""
    from retfound_hpo.training.hparams import train_with_hparams

    return train_with_hparams(
        hparams,
        params.model,
        params.train,
        seed=params.seed,
        metric=params.hpo.metric,
        epochs=epochs,
        patience=patience,
        train=train,
        val=val,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
