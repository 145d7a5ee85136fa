"""The sections of params.yaml: one frozen dataclass per section, with its defaults.

Each function of the pipeline takes the section (or the few values) it uses; only stage scripts
and the search's worker entry point hold the whole `Params`. params_yaml.load_params builds them,
refusing unknown keys and wrong types (typed.py) and values out of range (checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retfound_hpo.core.recipes import arch_defaults, recipe_value


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
    # Exam list (Messidor-2's messidor-2.csv, left;right): an exam's images share a split and a
    # resampling unit, and referral is also reported per exam.
    exams: str | None = None
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
    arch: Literal[
        "vit_demo",
        "vit_large_patch16_224",
        "vit_large_patch14_dinov2",
        "vit_small_patch14_reg4_dinov2",
        "vit_large_patch16_dinov3",
    ] = "vit_demo"
    # lora: LoRA adapters + head; full: every weight (RETFound's finetune); linear_probe: the
    # head alone on a frozen backbone (RETFound's lp). Each has its own hpo.search_space section.
    adaptation: Literal["lora", "full", "linear_probe"] = "lora"
    input_size: int | None = None  # null: the arch's own (core.recipes.ARCHS)
    num_classes: int = 5
    drop_path_rate: float | None = None  # null: the adaptation's recipe (core.recipes.RECIPES)
    lora_targets: tuple[str, ...] = ("qkv",)
    lora_dropout: float = 0.0
    normalization: Literal["imagenet", "inception"] | None = None  # null: the arch's own

    def __post_init__(self) -> None:
        """Null values take the arch's and the adaptation's own (see core.recipes)."""
        size, norm = arch_defaults(self.arch, self.input_size, self.normalization)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "normalization", norm)
        if self.drop_path_rate is None:
            rate = recipe_value(self.adaptation, "model.drop_path_rate")
            object.__setattr__(self, "drop_path_rate", rate)


@dataclass(frozen=True)
class TrainConfig:
    num_workers: int = 0
    weight_decay: float = 0.05
    class_balance: Literal["loss", "sampler", "none"] = "loss"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: str = "auto"
    eval_batch_size: int = 128
    grad_accum_steps: int = 1  # batches per optimizer step, for batches that do not fit
    # The defaults below are lora's; in params.yaml a null (or absent) value takes the recipe
    # of model.adaptation (core.recipes.RECIPES: RETFound's for full and linear_probe).
    augment: Literal["basic", "randaugment"] = "basic"  # flips + jitter; or RandAugment too
    random_erasing: float = 0.0  # probability per image; RETFound recipe: 0.25
    warmup_epochs: int = 0  # linear warmup, then cosine decay
    label_smoothing: float = 0.0  # RETFound recipe: 0.1
    layer_decay: float = 1.0  # layer-wise lr decay; RETFound recipe: 0.65


@dataclass(frozen=True)
class SlurmConfig:
    """hpo.launcher slurm: one job array of retfound-worker tasks (search/cluster.py)."""

    tasks: int = 2  # array size: workers, one per task
    max_running: int | None = None  # at most this many tasks at once (sbatch --array=0-N%K)
    partition: str | None = None  # null: the cluster's default partition
    time: str = "24:00:00"  # per task, in sbatch's formats (minutes, H:M:S, D-H:M:S)
    gpus_per_task: int = 0  # --gres=gpu:N; 1 on a GPU cluster
    cpus_per_task: int = 1
    memory: str | None = None  # --mem, e.g. 32G; null: the partition's default
    account: str | None = None
    extra: tuple[str, ...] = ()  # more #SBATCH options, e.g. ["--qos=normal"]
    setup: tuple[str, ...] = ()  # shell lines run before the worker, e.g. ["module load cuda"]


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
    pruner_min_trials: int = 1  # median: earlier trials reported at an epoch before it prunes there
    pruner_min_epochs: int = 1  # hyperband / successive halving: the smallest budget
    pruner_reduction_factor: int = 3  # hyperband / successive halving
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Scale-out: worker processes on this host, and a shared database for workers elsewhere.
    n_workers: int = 1  # processes sharing the study here (one GPU each, or a share of the cores)
    # null: <study_dir>/study.db (SQLite, one machine); postgresql://user@host/db, or
    # journal:///<file> (Optuna's journal file, on a shared file system) for several machines
    storage: str | None = None
    launcher: Literal["local", "slurm"] = "local"  # slurm: the workers as one SLURM job array
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    heartbeat_seconds: int = 60  # a running trial silent for 2x this is failed (worker died)
    retry_failed_trials: int = 0  # re-runs of a dead worker's trial with the same parameters
    keep_adapters: bool = False  # keep each trial's LoRA adapter (a few MB) as an artifact

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.study_name

    @property
    def snapshot_url(self) -> str:
        """study.db in the study folder: the storage itself, or a copy of a shared study."""
        return f"sqlite:///{self.study_dir / 'study.db'}"

    @property
    def storage_url(self) -> str:
        """Where the study lives: hpo.storage, or study.db beside the other search outputs."""
        return self.storage or self.snapshot_url

    @property
    def objective_column(self) -> str:
        """The guide calls the objective column `best_val_acc`; other metrics follow suit."""
        return "best_val_acc" if self.metric == "accuracy" else f"best_val_{self.metric}"


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
    exams: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    datasets: tuple[EvalDataset, ...] = ()
    output_dir: str = "results/eval"
    # Cluster-bootstrap resamples for the 95% intervals of AUROC, kappa, F1, ECE (seeded by
    # `seed`); 0: none. Proportions always get proportion_interval (below).
    bootstrap_samples: int = 1000
    # Proportions (sensitivity, specificity, PPV, NPV, accuracy): Wilson or Clopper-Pearson,
    # widened by the design effect where a resampling unit holds several images.
    proportion_interval: Literal["wilson", "clopper-pearson"] = "wilson"
    # Referable-DR operating point: a threshold on P(grade >= 2) chosen on the val split, then
    # applied unchanged to test and every dataset. "sensitivity_lcb": the highest threshold whose
    # one-sided lower confidence bound (referable_confidence) of val sensitivity reaches
    # referable_target, so that the target holds beyond val; "sensitivity": the point estimate
    # reaches it (true sensitivity falls short about half the time); "youden": max sensitivity +
    # specificity - 1. Screening default: a missed referable eye costs more than a false
    # referral, and 0.90 is above the 80 % minimum of the UK screening standard and the 85 %
    # endpoint of the IDx-DR pivotal trial.
    referable_rule: Literal["sensitivity_lcb", "sensitivity", "youden"] = "sensitivity_lcb"
    referable_target: float = 0.9  # rules "sensitivity_lcb" and "sensitivity"
    referable_confidence: float = 0.95  # one-sided, of the lower bound (and of its report)
    # PPV and NPV are also given at this prevalence of referable DR (a screening population's;
    # the test set's own is usually higher). null: only at each dataset's own prevalence.
    prevalence: float | None = 0.078
    # Interval of the mean over train_best.seeds: "t" (95 %, n - 1 degrees of freedom) or
    # RETFound's mean +- 1.96 SD / sqrt(n) ("retfound_1.96", for comparison with their tables).
    seed_interval: Literal["t", "retfound_1.96"] = "t"
    # Fit a temperature on val and apply it to every dataset's probabilities (argmax unchanged);
    # calibration is reported before and after.
    temperature_scaling: bool = False


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
