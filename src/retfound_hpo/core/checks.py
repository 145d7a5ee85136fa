"""Range and consistency checks of params values that types alone cannot express."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.recipes import ARCHS
from retfound_hpo.core.space import LORA_TARGET_NAMES, check_search_space, fixed_params
from retfound_hpo.core.space_sections import active_space

if TYPE_CHECKING:
    from retfound_hpo.core.params import HpoConfig, Params

DATA_FORMATS = ("aptos", "eyepacs", "messidor", "idrid", "csv")
# retfound: RETFound's selection score, (macro F1 + macro AUROC + unweighted kappa) / 3
METRICS = ("accuracy", "kappa", "auroc", "f1", "retfound")
POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")
STORAGE_SCHEMES = ("sqlite:///", "journal:///", *POSTGRES_SCHEMES)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
# sbatch --time: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S
SLURM_TIME = re.compile(r"(\d+-\d+|\d+)(:\d{1,2}){0,2}|UNLIMITED|INFINITE")
SLURM_NAME = re.compile(r"[A-Za-z0-9_.,+-]+")
SLURM_MEMORY = re.compile(r"\d+[KMGT]?")
# #SBATCH options the launcher sets itself (tasks, logs, working folder)
SLURM_OWN = ("--array", "--output", "--error", "--chdir", "--wrap", "--parsable", "-a", "-o", "-e")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def check_values(p: Params) -> None:
    """Range checks that types alone cannot express."""
    d, m, t, h, tb = p.data, p.model, p.train, p.hpo, p.train_best
    # numpy's generators take seeds below 2**32; a negative seed fails deep inside a trial.
    _require(0 <= p.seed < 2**32, "seed", p.seed, "must be an integer in [0, 2**32)")
    _require(d.format in DATA_FORMATS, "data.format", d.format, f"choose one of {DATA_FORMATS}")
    sets = [
        ("data", d),
        *((f"evaluate.datasets[{i}]", ds) for i, ds in enumerate(p.evaluate.datasets)),
    ]
    for key, reader in sets:  # the generic reader needs to know which columns hold what
        for column in ("id_column", "label_column"):
            _require(
                reader.format != "csv" or bool(getattr(reader, column)),
                f"{key}.{column}",
                getattr(reader, column),
                "format 'csv' needs id_column and label_column (the CSV's column names)",
            )
    for key, frac in (
        ("data.val_fraction", d.val_fraction),
        ("data.test_fraction", d.test_fraction),
    ):
        _require(0 < frac < 0.5, key, frac, "must be between 0 and 0.5")
    _require(  # past 128 bits two hashes agree less than unrelated images do
        0 <= d.duplicate_distance <= 128,
        "data.duplicate_distance",
        d.duplicate_distance,
        "must be 0-128 (bits of the 256-bit hash; 0: identical hashes only)",
    )
    _require(d.demo.n_domain_a >= 20, "data.demo.n_domain_a", d.demo.n_domain_a, "must be >= 20")
    _require(d.demo.n_domain_b >= 0, "data.demo.n_domain_b", d.demo.n_domain_b, "must be >= 0")
    _require(d.demo.lesion_scale > 0, "data.demo.lesion_scale", d.demo.lesion_scale, "must be > 0")
    arch = ARCHS[m.arch]
    patch = arch.patch_size
    _require(
        m.input_size % patch == 0 and m.input_size >= 2 * patch,
        "model.input_size",
        m.input_size,
        f"must be a multiple of {patch} (the patch size of {m.arch}), at least {2 * patch}",
    )
    _require(
        arch.resizable or m.input_size == arch.input_size,
        "model.input_size",
        m.input_size,
        f"{arch.label} was trained at {arch.input_size} px only (its weights' position grid); "
        f"set {arch.input_size} or null",
    )
    _require(
        2 <= m.num_classes <= 5,
        "model.num_classes",
        m.num_classes,
        "must be 2-5 (DR grades 0-4; the data's highest grade + 1)",
    )
    _require(
        0 <= m.drop_path_rate < 1, "model.drop_path_rate", m.drop_path_rate, "must be in [0, 1)"
    )
    _require(
        len(m.lora_targets) > 0, "model.lora_targets", m.lora_targets, "list at least one module"
    )
    for i, target in enumerate(m.lora_targets):
        _require(
            target in LORA_TARGET_NAMES,
            f"model.lora_targets[{i}]",
            target,
            f"choose from {list(LORA_TARGET_NAMES)} (attention qkv and proj, MLP fc1 and fc2)",
        )
    _require(0 <= m.lora_dropout < 1, "model.lora_dropout", m.lora_dropout, "must be in [0, 1)")
    _require(t.num_workers >= 0, "train.num_workers", t.num_workers, "must be >= 0")
    _require(
        DEVICE.fullmatch(t.device) is not None,
        "train.device",
        t.device,
        "use auto, cpu, cuda, cuda:<index> or mps",
    )
    _require(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "must be >= 1")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(t.grad_accum_steps >= 1, "train.grad_accum_steps", t.grad_accum_steps, "must be >= 1")
    _require(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "must be >= 0")
    _require(
        0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "must be in [0, 1)"
    )
    _require(0 < t.layer_decay <= 1, "train.layer_decay", t.layer_decay, "must be in (0, 1]")
    _require(
        0 <= t.random_erasing < 1, "train.random_erasing", t.random_erasing, "must be in [0, 1)"
    )
    _require(h.n_trials >= 1, "hpo.n_trials", h.n_trials, "must be >= 1")
    _require(
        h.timeout_hours is None or h.timeout_hours > 0,
        "hpo.timeout_hours",
        h.timeout_hours,
        "must be > 0 or null",
    )
    _require(h.num_epochs >= 1, "hpo.num_epochs", h.num_epochs, "must be >= 1")
    _require(
        h.early_stopping_patience >= 1,
        "hpo.early_stopping_patience",
        h.early_stopping_patience,
        "must be >= 1",
    )
    _require(h.pruner_min_trials >= 1, "hpo.pruner_min_trials", h.pruner_min_trials, "must be >= 1")
    for key in ("sampler_startup_trials", "pruner_startup_trials", "pruner_warmup_epochs"):
        _require(getattr(h, key) >= 0, f"hpo.{key}", getattr(h, key), "must be >= 0")
    _require(h.pruner_min_epochs >= 1, "hpo.pruner_min_epochs", h.pruner_min_epochs, "must be >= 1")
    signals = ("objective", "loss", *METRICS)
    _require(h.prune_on in signals, "hpo.prune_on", h.prune_on, f"choose one of {list(signals)}")
    _require(
        h.pruner_reduction_factor >= 2,
        "hpo.pruner_reduction_factor",
        h.pruner_reduction_factor,
        "must be >= 2",
    )
    _require(h.n_workers >= 1, "hpo.n_workers", h.n_workers, "must be >= 1")
    _require(h.heartbeat_seconds >= 1, "hpo.heartbeat_seconds", h.heartbeat_seconds, "must be >= 1")
    _require(
        h.retry_failed_trials >= 0, "hpo.retry_failed_trials", h.retry_failed_trials, "must be >= 0"
    )
    _require(
        h.storage is None or h.storage.startswith(STORAGE_SCHEMES),
        "hpo.storage",
        h.storage,
        "use null (study.db in hpo.output_dir), sqlite:///<path>, journal:///<path> or "
        "postgresql://user@host/db",
    )
    _check_launcher(h)
    _require(tb.epochs >= 1, "train_best.epochs", tb.epochs, "must be >= 1")
    _require(
        tb.early_stopping_patience >= 1,
        "train_best.early_stopping_patience",
        tb.early_stopping_patience,
        "must be >= 1 (epochs without improvement before stopping)",
    )
    if tb.seeds is not None:
        _require(
            len(tb.seeds) > 0 and len(set(tb.seeds)) == len(tb.seeds),
            "train_best.seeds",
            list(tb.seeds),
            "list one or more different seeds, e.g. [42, 43, 44], or null for just `seed`",
        )
        for i, s in enumerate(tb.seeds):
            _require(
                0 <= s < 2**32, f"train_best.seeds[{i}]", s, "must be an integer in [0, 2**32)"
            )
    ev = p.evaluate
    _require(
        ev.bootstrap_samples >= 0,
        "evaluate.bootstrap_samples",
        ev.bootstrap_samples,
        "must be >= 0 (0 turns the intervals off)",
    )
    _require(
        0 < ev.referable_target <= 1,
        "evaluate.referable_target",
        ev.referable_target,
        "must be in (0, 1] (the val sensitivity the threshold must reach)",
    )
    _require(
        0.5 <= ev.referable_confidence < 1,
        "evaluate.referable_confidence",
        ev.referable_confidence,
        "must be in [0.5, 1) (one-sided confidence of the val sensitivity's lower bound)",
    )
    _require(
        ev.prevalence is None or 0 < ev.prevalence < 1,
        "evaluate.prevalence",
        ev.prevalence,
        "must be in (0, 1) (referable DR in the screened population), or null",
    )
    for key, path in [("data.exams", d.exams)] + [
        (f"evaluate.datasets[{i}].exams", ds.exams) for i, ds in enumerate(ev.datasets)
    ]:
        _require(path is None or path.strip() != "", key, path, "name the exam list, or null")
    _require(
        not h.keep_adapters or m.adaptation == "lora",
        "hpo.keep_adapters",
        h.keep_adapters,
        f"model.adaptation {m.adaptation} has no LoRA adapter to keep; set false",
    )
    check_search_space(h.search_space, m.adaptation)
    space = active_space(h.search_space, m.adaptation)
    for i, values in enumerate(h.enqueue_trials):
        fixed_params(space, values, f"hpo.enqueue_trials[{i}]")


def _check_launcher(h: HpoConfig) -> None:
    """hpo.launcher slurm and its section; storages that several nodes can share."""
    _require(
        h.storage != "journal:///" and h.storage_url != f"journal:///{h.study_dir / 'study.db'}",
        "hpo.storage",
        h.storage,
        "a journal needs a file of its own: journal:///<path>, not study.db",
    )
    if h.launcher != "slurm":
        return
    _require(
        not h.storage_url.startswith("sqlite"),
        "hpo.storage",
        h.storage,
        "with hpo.launcher slurm the tasks run on several nodes, where SQLite locks up over a "
        "network file system: use journal:///<file on a shared file system> or "
        "postgresql://user@host/db",
    )
    s = h.slurm
    _require(1 <= s.tasks <= 1000, "hpo.slurm.tasks", s.tasks, "must be 1-1000 (array tasks)")
    _require(
        s.max_running is None or s.max_running >= 1,
        "hpo.slurm.max_running",
        s.max_running,
        "must be >= 1 or null (no limit)",
    )
    for key in ("partition", "account"):
        value = getattr(s, key)
        _require(
            value is None or SLURM_NAME.fullmatch(value) is not None,
            f"hpo.slurm.{key}",
            value,
            "must be a SLURM name (letters, digits, _ . - +) or null",
        )
    _require(
        SLURM_TIME.fullmatch(s.time) is not None,
        "hpo.slurm.time",
        s.time,
        "use sbatch's formats: minutes, H:M:S or D-H:M:S, e.g. 24:00:00",
    )
    _require(s.gpus_per_task >= 0, "hpo.slurm.gpus_per_task", s.gpus_per_task, "must be >= 0")
    _require(s.cpus_per_task >= 1, "hpo.slurm.cpus_per_task", s.cpus_per_task, "must be >= 1")
    _require(
        s.memory is None or SLURM_MEMORY.fullmatch(s.memory) is not None,
        "hpo.slurm.memory",
        s.memory,
        "use sbatch's --mem format, e.g. 32G or 16000 (MB), or null",
    )
    for key in ("extra", "setup"):
        for i, line in enumerate(getattr(s, key)):
            _require(
                "\n" not in line and bool(line.strip()),
                f"hpo.slurm.{key}[{i}]",
                line,
                "must be one non-empty line",
            )
    for i, line in enumerate(s.extra):
        option = line.split("=")[0].split()[0]
        _require(
            line.startswith("-") and option not in SLURM_OWN,
            f"hpo.slurm.extra[{i}]",
            line,
            "must be an sbatch option such as --qos=normal; the launcher sets "
            f"{', '.join(o for o in SLURM_OWN if o.startswith('--'))} itself",
        )
