"""Typed, validated params.yaml: one dataclass per section, one place for defaults and errors."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from retfound_hpo.errors import ConfigError
from retfound_hpo.space import (
    LORA_TARGET_NAMES,
    check_search_space,
    fixed_params,
    normalize_search_space,
)

DATA_FORMATS = ("aptos", "eyepacs", "messidor", "idrid", "csv")
ARCHS = ("vit_demo", "vit_large_patch16_224", "vit_large_patch14_dinov2")
# retfound: RETFound's selection score, (macro F1 + macro AUROC + unweighted kappa) / 3
METRICS = ("accuracy", "kappa", "auroc", "f1", "retfound")
STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


@dataclass(frozen=True)
class DemoConfig:
    enabled: bool = True
    out_dir: str = "data/demo"
    n_domain_a: int = 1500
    n_domain_b: int = 400
    lesion_scale: float = 2.0


@dataclass(frozen=True)
class DataConfig:
    format: Literal["aptos", "eyepacs", "messidor", "idrid", "csv"] = "aptos"
    csv: str = "data/demo/aptos/train.csv"
    images: str = "data/demo/aptos/train_images"
    skip_bad_rows: bool = False  # drop (and log) bad rows and unreadable images instead of stopping
    # format "csv" only: which columns hold what; image = <images>/<path_template><extension>
    id_column: str | None = None
    label_column: str | None = None  # grades 0-4
    patient_column: str | None = None  # none: every image is its own patient
    path_template: str | None = None  # {id}, {label}, {patient}; default "{id}"
    extension: str | None = None  # e.g. ".png"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Near-duplicate photographs (perceptual hash) always share a split; drop_conflicting also
    # drops every image of a group whose grades disagree.
    duplicates: Literal["keep", "drop_conflicting"] = "keep"
    duplicate_distance: int = 60  # most hash bits (of 256) in which duplicates differ
    prepared_dir: str = "data/prepared"
    splits_dir: str = "data/splits"
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = "models/demo_backbone/checkpoint.pth"
    arch: Literal["vit_demo", "vit_large_patch16_224", "vit_large_patch14_dinov2"] = "vit_demo"
    input_size: int = 96
    num_classes: int = 5
    drop_path_rate: float = 0.1
    lora_targets: tuple[str, ...] = ("qkv",)
    lora_dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    num_workers: int = 0
    weight_decay: float = 0.05
    class_balance: Literal["loss", "sampler", "none"] = "loss"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: str = "auto"
    eval_batch_size: int = 128
    augment: Literal["basic", "randaugment"] = "basic"  # flips + jitter; or RandAugment too
    grad_accum_steps: int = 1  # batches per optimizer step, for batches that do not fit
    warmup_epochs: int = 0  # linear warmup, then cosine decay
    label_smoothing: float = 0.0  # RETFound recipe: 0.1
    layer_decay: float = 1.0  # layer-wise lr decay; RETFound recipe: 0.65


@dataclass(frozen=True)
class HpoConfig:
    study_name: str = "retfound_lora_search"
    output_dir: str = "results/optuna"
    n_trials: int = 50
    timeout_hours: float | None = None
    num_epochs: int = 10
    early_stopping_patience: int = 3
    metric: Literal["accuracy", "kappa", "auroc", "f1", "retfound"] = "accuracy"
    multi_objective: bool = False  # also minimise trainable parameters (Pareto front; no pruning)
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    sampler_startup_trials: int = 10  # TPE / GP: random trials before it models the space
    # Hyperparameter sets run first (skipped when the study already holds them), by entry name.
    enqueue_trials: tuple[dict[str, Any], ...] = ()
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    # What the pruner ranks trials by each epoch: "objective" (hpo.metric), another validation
    # metric, or "loss" (class-balanced validation cross-entropy). The study's value stays
    # hpo.metric.
    prune_on: str = "objective"
    pruner_startup_trials: int = 3  # median: trials finished before any pruning
    pruner_warmup_epochs: int = 2  # median: epochs a trial always gets
    pruner_min_epochs: int = 1  # hyperband / successive halving: the smallest budget
    pruner_reduction_factor: int = 3  # hyperband / successive halving
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Scale-out: worker processes on this host, and a shared database for workers elsewhere.
    n_workers: int = 1  # processes sharing the study here (one GPU each, or a share of the cores)
    storage: str | None = None  # null: <study_dir>/study.db; or postgresql://user@host/db
    heartbeat_seconds: int = 60  # a running trial silent for 2x this is failed (worker died)
    retry_failed_trials: int = 0  # re-runs of a dead worker's trial with the same parameters
    keep_adapters: bool = False  # keep each trial's LoRA adapter (a few MB) as an artifact

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.study_name


@dataclass(frozen=True)
class TrainBestConfig:
    epochs: int = 30
    early_stopping_patience: int = 5
    output_dir: str = "models/best_model"
    results_dir: str = "results/train"
    # One training run per seed, each kept in <seeds_dir>/<seed>/; output_dir gets the best on val.
    seeds: tuple[int, ...] | None = None  # null: just `seed`
    seeds_dir: str = "models/seeds"

    def seed_list(self, default: int) -> list[int]:
        """The seeds to train: train_best.seeds, or just `default` (the params' seed)."""
        return list(self.seeds) if self.seeds is not None else [default]


@dataclass(frozen=True)
class EvalDataset:
    name: str
    format: Literal["aptos", "eyepacs", "messidor", "idrid", "csv"]
    csv: str
    images: str
    # The same reader options as data.* (see DataConfig).
    skip_bad_rows: bool = False
    id_column: str | None = None
    label_column: str | None = None
    patient_column: str | None = None
    path_template: str | None = None
    extension: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    datasets: tuple[EvalDataset, ...] = ()
    output_dir: str = "results/eval"
    bootstrap_samples: int = 1000  # resamples for the 95% intervals (seeded by `seed`); 0: none
    # Referable-DR operating point: a threshold on P(grade >= 2) chosen on the val split, then
    # applied unchanged to test and every dataset. "sensitivity": the highest threshold whose val
    # sensitivity is >= referable_target; "youden": max sensitivity + specificity - 1. Screening
    # default: a missed referable eye costs more than a false referral, and 0.90 is above the 80 %
    # minimum of the UK screening standard and the 85 % endpoint of the IDx-DR pivotal trial.
    referable_rule: Literal["sensitivity", "youden"] = "sensitivity"
    referable_target: float = 0.9  # rule "sensitivity" only

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 0:
            raise ConfigError(
                f"evaluate.bootstrap_samples: {self.bootstrap_samples!r} is not allowed; "
                "must be >= 0 (0 turns the intervals off)"
            )
        if not 0 < self.referable_target <= 1:
            raise ConfigError(
                f"evaluate.referable_target: {self.referable_target!r} is not allowed; "
                "must be in (0, 1] (the val sensitivity the threshold must reach)"
            )


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = False
    project: str = "diabetic-retinopathy-hpo"


@dataclass(frozen=True)
class Params:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hpo: HpoConfig = field(default_factory=HpoConfig)
    train_best: TrainBestConfig = field(default_factory=TrainBestConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
    params = _build(Params, raw, "")
    space = normalize_search_space(params.hpo.search_space)
    params = dataclasses.replace(params, hpo=dataclasses.replace(params.hpo, search_space=space))
    _check_values(params)
    return params


def dump_params(params: Params, path: str | Path) -> None:
    """Write `params` as a params.yaml that load_params reads back to the same values."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    Path(path).write_text(yaml.safe_dump(plain(dataclasses.asdict(params)), sort_keys=False))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """'line 5, column 1: found character '\\t' ...' from a YAML error, in one line."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    tab = "\t" in problem or "'\\t'" in problem  # PyYAML shows the tab escaped
    hint = "; indent with spaces, not tabs" if tab else ""
    return f"{where}not valid YAML ({problem}){hint}"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a dict, type-checking each field; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(
            f"{prefix}{missing[0]}: missing; required keys here: {', '.join(required)}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # "qkv,proj" is accepted for lists of names
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _is_number(value):
        return float(value)  # `dvc exp run -S x=1e-5` writes 1e-05, which YAML 1.1 reads as text
    if hint in (int, str, bool) and type(value) is hint:
        return value
    expected = "true or false" if hint is bool else hint.__name__
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def _check_values(p: Params) -> None:
    """Range checks that types alone cannot express."""
    d, m, t, h, tb = p.data, p.model, p.train, p.hpo, p.train_best
    # numpy's generators take seeds below 2**32; a negative seed fails deep inside a trial.
    _require(0 <= p.seed < 2**32, "seed", p.seed, "must be an integer in [0, 2**32)")
    _require(d.format in DATA_FORMATS, "data.format", d.format, f"choose one of {DATA_FORMATS}")
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
    patch = 14 if "patch14" in m.arch else 16
    _require(
        m.input_size % patch == 0 and m.input_size >= 2 * patch,
        "model.input_size",
        m.input_size,
        f"must be a multiple of {patch} (the patch size of {m.arch}), at least {2 * patch}",
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
    _require(
        bool(h.study_name) and "/" not in h.study_name,
        "hpo.study_name",
        h.study_name,
        "must be a non-empty name without '/'",
    )
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
        "use null (study.db in hpo.output_dir), sqlite:///<path> or postgresql://user@host/db",
    )
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
    names = [ds.name for ds in p.evaluate.datasets]
    _require(
        len(set(names)) == len(names) and not {"test", "val"} & set(names),
        "evaluate.datasets",
        names,
        "names must be unique and not 'test' or 'val' (the prepared splits, evaluated too)",
    )
    check_search_space(h.search_space)
    for i, values in enumerate(h.enqueue_trials):
        fixed_params(h.search_space, values, f"hpo.enqueue_trials[{i}]")
