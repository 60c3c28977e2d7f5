"""The typed run configuration and its validation.

Hydra composes a plain mapping; `load_config` turns it into these dataclasses and rejects every user
mistake with a `ConfigError` that names the key, the bad value and what is allowed. Nothing below the
CLI sees Hydra: library code receives a `RunConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from kd_runner import methods
from kd_runner.errors import ConfigError
from kd_runner.methods import kd
from kd_runner.names import (
    DATASET_NAMES,
    DOWNLOADABLE,
    MEMORY_FORMATS,
    METRIC_NAMES,
    MODEL_NAMES,
    PRECISIONS,
    PRETRAINED_FAMILIES,
    SIZED_NETWORKS,
    SOFT_LOSSES,
    WITH_TEST_SPLIT,
    network_label,
)
from kd_runner.store.files import digest
from kd_runner.user_code import source_digest

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "multistep")
DEVICES = ("auto", "cpu", "cuda", "mps")
FREEZE = ("none", "backbone")
LOADERS = ("memory", "dataloader")
WANDB_MODES = ("offline", "online")
VAL_SPLITS = ("test", "holdout")
AUGMENT = (True, False, "none", "crop_flip", "resized_crop_flip")
# beyond these, logits / T or the T^2 scaling overflow float32: a NaN that would read as a learning-rate problem
TEMPERATURES = (0.01, 100)
FLOAT32_MAX = 3.4028234663852886e38  # the optimizers step in float32: a larger learning rate overflows them
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (seeded with every run) takes 32-bit seeds


@dataclass
class DatasetConfig:
    name: str = field(
        default="digits", metadata={"doc": "the dataset; dataset=NAME picks it (its file in conf/dataset/ if any)"}
    )
    root: str = field(default="data", metadata={"doc": "folder of the dataset's files (file-based datasets)"})
    download: bool = field(
        default=False,
        metadata={"doc": "fetch missing files with torchvision (mnist, fashion_mnist, cifar10, cifar100, svhn)"},
    )
    val_split: str = field(
        default="holdout", metadata={"doc": "test: the dataset's own test/val split | holdout: val_fraction of train"}
    )
    val_fraction: float = field(
        default=0.2, metadata={"doc": "held-out share of train with val_split=holdout (fake: size of its test split)"}
    )
    split_seed: int = field(default=0, metadata={"doc": "fixes the train/val split independently of the run seed"})
    augment: typing.Any = field(  # true, false or a preset's name (OmegaConf cannot nest a bool | str field)
        default=True,
        metadata={
            "doc": "true: the dataset's standard training augmentation (if it has one) | false or none | "
            "crop_flip (pad-and-crop + flip) | resized_crop_flip (random-resized crop + flip)"
        },
    )
    num_samples: int = field(default=600, metadata={"doc": "number of generated training images (synthetic, fake)"})
    image_size: int = field(
        default=8,
        metadata={"doc": "side of the generated images (synthetic, fake); imagefolder: side after resize + crop"},
    )
    channels: int = field(default=1, metadata={"doc": "channels of the generated images (synthetic; fake: 1 or 3)"})
    num_classes: int = field(
        default=10, metadata={"doc": "number of classes of the generated images (synthetic, fake)"}
    )
    factory: dict[str, typing.Any] = field(
        default_factory=lambda: {"_target_": None},
        metadata={
            "doc": "your own dataset: _target_ names a callable returning (train, val[, num_classes]); the other "
            "keys are its arguments (+dataset.factory.KEY=VALUE); see docs/datasets.md"
        },
    )
    mean: list[float] = field(
        default_factory=list,
        metadata={"doc": "per-channel normalisation mean; empty: computed from the training split"},
    )
    std: list[float] = field(
        default_factory=list, metadata={"doc": "per-channel normalisation std; empty: computed from the training split"}
    )
    memory_mb: int = field(
        default=4096,
        metadata={"doc": "a dataset.factory dataset larger than this (MiB) streams through DataLoader workers"},
    )


@dataclass
class StageConfig:
    """A network and the recipe that trains it (one for the teacher, one for the student)."""

    name: str = field(
        default="cnn",
        metadata={
            "doc": "the network; teacher=NAME / student=NAME pick it (its file in conf/teacher/, conf/student/ if any)"
        },
    )
    model: dict[str, typing.Any] = field(
        default_factory=lambda: {"_target_": None},
        metadata={
            "doc": "your own network: _target_ names a callable returning an nn.Module, the other keys are its "
            "arguments (+teacher.model.KEY=VALUE); name then labels it; see docs/extending.md"
        },
    )
    width: int = field(
        default=32, metadata={"doc": "size of the small native nets: cnn channels of the first block, mlp hidden units"}
    )
    depth: int = field(default=2, metadata={"doc": "size of the small native nets: cnn conv blocks, mlp hidden layers"})
    pretrained: bool = field(
        default=False,
        metadata={"doc": "start from ImageNet weights through torchvision's weights API (torchvision families)"},
    )
    weights_path: str | None = field(
        default=None,
        metadata={"doc": "a local state dict to start from (torchvision format or kd-runner's); the head is replaced"},
    )
    freeze: str = field(default="none", metadata={"doc": "none | backbone (train only the classifier head)"})
    epochs: int = field(
        default=10, metadata={"doc": "training epochs (>= 0; teacher.epochs=0 needs teacher.checkpoint)"}
    )
    batch_size: int = field(default=64, metadata={"doc": "batch size (> 0)"})
    optimizer: typing.Any = field(  # a name or a _target_ node (OmegaConf cannot nest a str | dict field)
        default="sgd",
        metadata={
            "doc": "sgd | adam | adamw, or a node of your own, e.g. {_target_: torch.optim.AdamW, betas: [0.9,0.99]}: "
            "given the parameters, and lr and weight_decay when it takes them and does not set them"
        },
    )
    lr: float = field(default=0.05, metadata={"doc": "learning rate (> 0)"})
    momentum: float = field(default=0.9, metadata={"doc": "momentum of optimizer=sgd (>= 0)"})
    weight_decay: float = field(default=5e-4, metadata={"doc": "weight decay (>= 0)"})
    scheduler: typing.Any = field(
        default="cosine",
        metadata={
            "doc": "learning-rate schedule: none | step | cosine | onecycle | multistep, or a node of your own "
            "(given the optimizer, and total_steps when it takes it; stepped once per batch)"
        },
    )
    step_size: int = field(default=7, metadata={"doc": "epochs between decays, scheduler=step"})
    gamma: float = field(default=0.1, metadata={"doc": "decay factor, scheduler=step and multistep"})
    milestones: list[int] = field(
        default_factory=list, metadata={"doc": "epochs of the decays, scheduler=multistep, e.g. [150,180,210]"}
    )

    @property
    def label(self) -> str:
        """The network as records, tables and trackers name it (timm/<arch> for teacher=timm)."""
        return network_label(self.name, self.model)


@dataclass
class TeacherConfig(StageConfig):
    seed: int = field(
        default=0, metadata={"doc": "the teacher's own seed: a sweep over the run seed reuses one teacher"}
    )
    checkpoint: str | None = field(
        default=None,
        metadata={"doc": "a teacher state dict to start from (required when teacher.epochs=0: used as is)"},
    )
    ensemble: int = field(
        default=1, metadata={"doc": "number of teachers (seeds seed, seed+1, ...) whose averaged soft targets teach"}
    )


@dataclass
class TransferConfig:
    """The data the student is distilled on, when it is not the teacher's training set."""

    dataset: DatasetConfig | None = field(
        default=None,
        metadata={"doc": "another dataset to distil on, with the keys of dataset (transfer=NAME); null: the run's"},
    )
    labeled: bool = field(
        default=True, metadata={"doc": "false: the transfer set's labels are not used (only alpha=0 is valid)"}
    )
    exclude_classes: list[int] = field(
        default_factory=list, metadata={"doc": "classes left out of the transfer set, e.g. [3]"}
    )
    omitted_bias: str | None = field(
        default=None,
        metadata={
            "doc": "after distillation raise the student's output bias of each excluded class by this number, or "
            "auto: by T * log((1/classes) / its share of the soft targets) (docs/datasets.md)"
        },
    )


@dataclass
class LoggerConfig:
    """The experiment trackers a run also reports to (logger=[csv,tensorboard,...]); metrics.csv and result.json
    are always written. Not part of the config digest or result key: a tracker changes no result."""

    tensorboard: bool = field(default=False, metadata={"doc": "event files in the run directory's tensorboard/"})
    mlflow: bool = field(default=False, metadata={"doc": "an MLflow run: params, per-epoch metrics, artifacts"})
    wandb: bool = field(default=False, metadata={"doc": "a Weights & Biases run (offline by default: logger.mode)"})
    tracking_uri: str = field(
        default="outputs/mlflow",
        metadata={
            "doc": "MLflow: a local directory (SQLite store and artifacts) or a server's URL, e.g. http://host:5000"
        },
    )
    project: str = field(default="kd-runner", metadata={"doc": "MLflow experiment and W&B project"})
    group: str | None = field(
        default=None,
        metadata={
            "doc": "the runs' group (W&B group; MLflow experiment <project>/<group>); a sweep: its directory, "
            "less outputs/sweeps/"
        },
    )
    name: str | None = field(
        default=None,
        metadata={"doc": "the tracker run's name (null: a sweep job's swept overrides, else the run directory's name)"},
    )
    mode: str = field(default="offline", metadata={"doc": "W&B: offline (files in the run directory) | online"})
    hparams: list[str] = field(
        default_factory=list,
        metadata={"doc": "keys TensorBoard's HPARAMS shows besides the main ones (a sweep adds its swept keys)"},
    )
    log_model: bool = field(
        default=False, metadata={"doc": "MLflow and W&B also keep the student's weights (student.pt) as an artifact"}
    )
    strict: bool = field(
        default=False,
        metadata={
            "doc": "true: check each tracker (reachable, writable) before the first job and stop in one line "
            "if one is not; false: a tracker that fails warns and the run goes on"
        },
    )


def user_cache_dir() -> str:
    """The default cache: one per user ($KD_RUNNER_CACHE, else $XDG_CACHE_HOME/kd-runner, else
    ~/.cache/kd-runner), whatever the current directory, so the same command run from another folder
    loads the teachers already fine-tuned."""
    if os.environ.get("KD_RUNNER_CACHE"):
        return os.path.expanduser(os.environ["KD_RUNNER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.expanduser(base), "kd-runner")


@dataclass
class PathsConfig:
    """Where kd-run reads and writes (the `paths` group, as in lightning-hydra-template): a folder moved here
    moves everything that goes into it. Not part of a run's identity: where files go changes no result."""

    output_dir: str = field(
        default="outputs",
        metadata={"doc": "the runs (runs/), sweeps (sweeps/) and local MLflow store (mlflow/); relative: to the cwd"},
    )
    cache_dir: str = field(
        default_factory=user_cache_dir,
        metadata={
            "doc": "fine-tuned teachers and teacher logits, the user's whatever the cwd: $KD_RUNNER_CACHE, else "
            "$XDG_CACHE_HOME/kd-runner, else ~/.cache/kd-runner",
            "shown": "~/.cache/kd-runner",
        },
    )


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(
        default_factory=TeacherConfig, metadata={"doc": "the teacher stage: its network and training recipe"}
    )
    student: StageConfig = field(
        default_factory=StageConfig, metadata={"doc": "the student stage: its network and training recipe"}
    )
    dataset: DatasetConfig = field(
        default_factory=DatasetConfig, metadata={"doc": "the data both stages train and are evaluated on"}
    )
    transfer: TransferConfig = field(
        default_factory=TransferConfig, metadata={"doc": "the data the student is distilled on, when not the dataset's"}
    )
    alpha: float = field(
        default=0.5,
        metadata={"doc": "weight of the hard-label loss in [0, 1]: 1 = no distillation, 0 = pure distillation"},
    )
    temperature: float = field(
        default=4.0, metadata={"doc": "softening temperature T of the soft targets, in [0.01, 100]"}
    )
    soft_loss: str = field(
        default="kl", metadata={"doc": "kl (Hinton, T^2-scaled) | soft_ce (T^2-scaled) | mse (raw logits, ignores T)"}
    )
    distill: methods.Params = field(
        default_factory=kd.Params, metadata={"doc": "the distillation method and its parameters (distill=NAME)"}
    )
    seed: int = field(default=0, metadata={"doc": "seed of the student stage (initialisation, shuffling)"})
    device: str = field(default="auto", metadata={"doc": "auto (cuda > mps > cpu) | cpu | cuda | mps"})
    progress: bool = field(
        default=True,
        metadata={"doc": "per-batch tqdm bars (shown only on a terminal); the per-epoch log lines are always on"},
    )
    paths: PathsConfig = field(
        default_factory=PathsConfig, metadata={"doc": "where kd-run writes its outputs and its cache (paths=NAME)"}
    )
    cache_dir: str = field(
        default_factory=user_cache_dir,
        metadata={
            "doc": "fine-tuned teachers and teacher logits: paths.cache_dir unless given (the override for one call)",
            "shown": "paths.cache_dir",
        },
    )
    precision: str = field(
        default="auto",
        metadata={"doc": "auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16: autocast of the forward passes"},
    )
    memory_format: str = field(
        default="auto",
        metadata={"doc": "auto (channels_last on CUDA and CPU) | channels_last | contiguous, for conv nets"},
    )
    compile: bool = field(
        default=False, metadata={"doc": "torch.compile the networks (once per process, reused by every job of a sweep)"}
    )
    loader: str = field(
        default="memory",
        metadata={"doc": "memory: whole splits on the device | dataloader: DataLoader workers stream batches"},
    )
    num_workers: int = field(default=2, metadata={"doc": "DataLoader worker processes (loader=dataloader)"})
    deterministic: bool = field(
        default=False,
        metadata={"doc": "deterministic CUDA kernels (cuDNN, cuBLAS workspace, torch.use_deterministic_algorithms)"},
    )
    optimize_metric: str = field(
        default="student_acc",
        metadata={"doc": "the final metric a search (hparams_search=...) optimizes, e.g. student_acc"},
    )
    seeds_per_trial: int = field(
        default=1, metadata={"doc": "seeds a search trial runs (seed, seed+1, ...); its value is their mean"}
    )
    threads: int = field(
        default=0,
        metadata={
            "doc": "CPU threads of a job (CPU results depend on it): 0 = the environment's: OMP_NUM_THREADS, else "
            "the cores shared among torchrun's processes or a parallel launcher's jobs, else all cores"
        },
    )
    checkpoint_every_s: float = field(
        default=300.0,
        metadata={
            "doc": "seconds between a stage's resumable checkpoints (always written on SIGTERM/SIGINT; a SIGKILL "
            "loses at most this much training); 0: after every epoch"
        },
    )
    tags: list[str] = field(
        default_factory=list,
        metadata={"doc": "labels of the run, e.g. [baseline,paper]: in result.json and given to the trackers"},
    )
    logger: LoggerConfig = field(
        default_factory=LoggerConfig,
        metadata={"doc": "experiment trackers, several at once: logger=[csv,tensorboard,mlflow,wandb]"},
    )


def load_config(raw: typing.Mapping) -> RunConfig:
    """Build and validate a RunConfig from a plain nested mapping (e.g. Hydra's composed config): OmegaConf
    checks the types against the schema (the method's own `Params` for `distill`), then `_validate` the values."""
    structured = schema(_method(raw))
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(structured, raw))
    except OmegaConfBaseException as exc:
        raise _config_error(exc, structured, raw) from None
    _validate(cfg)
    return cfg


def schema(method: str = "kd"):
    """The structured config of a run whose `distill` node is `method`'s parameters."""
    try:
        params = methods.params_type(method)()
    except KeyError:
        raise ConfigError("distill.method", method, "one of: " + ", ".join(methods.METHODS)) from None
    return OmegaConf.structured(RunConfig(distill=params))


def _method(raw: typing.Mapping) -> str:
    distill = raw.get("distill") if isinstance(raw, typing.Mapping) else None
    return distill.get("method", "kd") if isinstance(distill, typing.Mapping) else "kd"


def _config_error(exc: OmegaConfBaseException, structured, raw: typing.Mapping) -> ConfigError:
    """OmegaConf's type error as one line naming the key, the value and what the schema allows."""
    key = exc.full_key or "config"
    value = OmegaConf.select(OmegaConf.create(dict(raw)), key, default=None) if exc.full_key else raw
    if isinstance(exc, ConfigKeyError):
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(structured, parent) if parent else structured
        return ConfigError(key, value, "unknown key; known keys here: " + ", ".join(sorted(node)))
    return ConfigError(key, value, str(exc.msg).strip().splitlines()[0])


def config_digest(cfg: RunConfig) -> str:
    """The run's identity: a short digest of its settings (what it reports to and how often it saves aside)
    and of the source of the user's code they name (`user_code_digests`). Equal digests mean the same run:
    a finished run is skipped and an unfinished one resumes only under the digest it started with."""
    return digest(_identity(cfg))


def _identity(cfg: RunConfig) -> dict:
    """What identifies a run: its settings (`_settings`) and the digests of the user's code they name."""
    return {**_settings(cfg), "user_code": user_code_digests(cfg)}


def user_code_digests(cfg: RunConfig) -> dict[str, str | None]:
    """The digest of the source (with the user modules it imports) of every `_target_` the config names."""
    return {key: source_digest(path, f"{key}._target_") for key, path in user_targets(cfg).items()}


def user_targets(cfg: RunConfig) -> dict[str, str]:
    """The dotted path of every `_target_` of the user's code the config names, by its key."""
    specs = {
        "teacher.model": cfg.teacher.model,
        "student.model": cfg.student.model,
        **{
            f"{name}.{key}": getattr(stage, key)
            for name, stage in (("teacher", cfg.teacher), ("student", cfg.student))
            for key in ("optimizer", "scheduler")
            if isinstance(getattr(stage, key), dict)
        },
        "dataset.factory": cfg.dataset.factory,
        "transfer.dataset.factory": cfg.transfer.dataset.factory if cfg.transfer.dataset else {},
        "distill.objective": getattr(cfg.distill, "objective", {}),
    }
    return {key: spec["_target_"] for key, spec in specs.items() if spec.get("_target_") is not None}


IGNORED_AT_ALPHA_1 = ("temperature", "soft_loss", "distill")  # alpha=1 trains on the labels alone


def result_key(cfg: RunConfig) -> str:
    """A digest of what can change a run's results: the whole config, with the keys this run ignores
    normalised (at alpha=1, the temperature, the soft loss and the method, unless the method trains the
    student in an init stage first). Jobs of equal keys give the same results, so a sweep runs the first
    and the others reuse it; data, recipes and seeds stay part of the key."""
    values = _identity(cfg)
    if cfg.alpha == 1:
        trains_first = getattr(cfg.distill, "init_epochs", 0) > 0  # a method with an init stage (ab, ft, fsp)
        ignored = [key for key in IGNORED_AT_ALPHA_1 if key != "distill" or not trains_first]
        values.update(dict.fromkeys(ignored))
        if not trains_first:  # the method's own code (distill=custom) is not run either
            values["user_code"].pop("distill.objective", None)
    return digest(values)


# where a run reports to, where its files and cache go, how often it saves and its labels change no result
NOT_COMPUTED = ("logger", "checkpoint_every_s", "paths", "cache_dir", "tags")


def _settings(cfg: RunConfig) -> dict:
    """The config's values without the NOT_COMPUTED keys, each stage's as `stage_settings`."""
    values = dataclasses.asdict(cfg)
    for key in NOT_COMPUTED:
        values.pop(key, None)
    values["teacher"], values["student"] = stage_settings(cfg.teacher), stage_settings(cfg.student)
    return values


def stage_settings(stage: StageConfig) -> dict:
    """A stage's values with those it does not read set to None, so that equivalent configs are one
    identity (and one teacher key): e.g. a network of the user's given by a group file, or on the command
    line over the default group's `width` and `depth`, which only the small native nets read."""
    values = dataclasses.asdict(stage)
    values.update(dict.fromkeys(unread_keys(stage)))
    return values


def unread_keys(stage: StageConfig) -> list[str]:
    """The recipe keys the stage's network, optimizer and scheduler do not read (kd_runner/models,
    train/optim.py)."""
    unread = []
    if stage.model["_target_"] is not None or stage.name not in SIZED_NETWORKS:
        unread += ["width", "depth"]
    if stage.optimizer != "sgd":
        unread.append("momentum")
    if stage.scheduler != "step":
        unread.append("step_size")
    if stage.scheduler not in ("step", "multistep"):
        unread.append("gamma")
    if stage.scheduler != "multistep":
        unread.append("milestones")
    return unread


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _one_of(key: str, value, options) -> None:
    _check(value in options, key, value, "one of: " + ", ".join(options))


def check_pretrained(name: str, pretrained: bool, weights_path: str | None, key: str = "pretrained") -> None:
    """`pretrained` needs a torchvision family and no weights file (`key` names the setting in the error)."""
    if pretrained and weights_path is not None:
        raise ConfigError(key, pretrained, "false when weights_path is set (the file supplies the weights)")
    if pretrained and name not in PRETRAINED_FAMILIES:
        families = ", ".join(PRETRAINED_FAMILIES)
        raise ConfigError(key, pretrained, f"false for {name}: ImageNet weights exist for {families}")


def _validate_stage(stage: StageConfig, key: str) -> None:
    _validate_target(stage.model, stage.name, MODEL_NAMES, f"{key}.model", f"{key}.name")
    if stage.model["_target_"] is None:
        check_pretrained(stage.name, stage.pretrained, stage.weights_path, f"{key}.pretrained")
    _check_choice(f"{key}.optimizer", stage.optimizer, OPTIMIZERS, "torch.optim.AdamW")
    _check_choice(f"{key}.scheduler", stage.scheduler, SCHEDULERS, "torch.optim.lr_scheduler.LinearLR")
    _one_of(f"{key}.freeze", stage.freeze, FREEZE)
    _check(stage.epochs >= 0, f"{key}.epochs", stage.epochs, "expected a whole number >= 0")
    _check(stage.batch_size > 0, f"{key}.batch_size", stage.batch_size, "expected a whole number > 0")
    _check(0 < stage.lr <= FLOAT32_MAX, f"{key}.lr", stage.lr, "expected a number > 0 that float32 holds (<= 3.4e38)")
    _check(stage.width > 0, f"{key}.width", stage.width, "expected a whole number > 0")
    _check(stage.depth > 0, f"{key}.depth", stage.depth, "expected a whole number > 0")
    _check(stage.momentum >= 0, f"{key}.momentum", stage.momentum, "expected a number >= 0")
    _check(stage.weight_decay >= 0, f"{key}.weight_decay", stage.weight_decay, "expected a number >= 0")
    _check(stage.step_size > 0, f"{key}.step_size", stage.step_size, "expected a whole number > 0")
    _check(0 < stage.gamma <= 1, f"{key}.gamma", stage.gamma, "expected a number in (0, 1]")
    if stage.scheduler == "multistep":
        ms = stage.milestones
        ok = len(ms) > 0 and all(m > 0 for m in ms) and list(ms) == sorted(set(ms))
        _check(ok, f"{key}.milestones", ms, "increasing epochs > 0 with scheduler=multistep, e.g. [150,180,210]")
    for name in ("weights_path", "checkpoint"):
        path = getattr(stage, name, None)
        _check(path is None or Path(path).is_file(), f"{key}.{name}", path, "no such file; expected a saved state dict")


def _check_choice(key: str, value, names: tuple[str, ...], example: str) -> None:
    """One of `names`, or a node of the user's naming a callable by `_target_`."""
    if isinstance(value, dict):
        target = value.get("_target_")
        _check(isinstance(target, str) and target != "", f"{key}._target_", target, f"a dotted path, e.g. {example}")
    else:
        _check(value in names, key, value, "one of: " + ", ".join(names) + f", or a node {{_target_: {example}, ...}}")


def _validate_target(spec: dict, name: str, builtin: tuple[str, ...], key: str, name_key: str) -> None:
    """A built-in `name`, or a user callable by `_target_` (then `name` is only a label, and not a built-in's)."""
    target = spec.get("_target_")
    if target is None:
        _check(len(spec) <= 1, key, spec, f"arguments only with {key}._target_ set")
        _one_of(name_key, name, builtin)
        return
    _check(
        isinstance(target, str) and target != "", f"{key}._target_", target, "a dotted path, e.g. mypkg.nets.TinyNet"
    )
    _check(
        name not in builtin and name != "" and "/" not in name,
        name_key,
        name,
        f"a label of your own for {key}._target_={target} (not a built-in name, no '/'), e.g. {name_key}=mine",
    )


def _check_seed(key: str, seed: int, count: int = 1) -> None:
    """`count` seeds from `seed` on (an ensemble uses seed, seed+1, ...) must all be valid numpy seeds."""
    top = SEED_MAX - count + 1
    _check(0 <= seed <= top, key, seed, f"expected a whole number in [0, {top}]")


def _check_finite(obj, prefix: str = "") -> None:
    """Every number of the config is finite (OmegaConf takes inf and nan as floats)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            _check(math.isfinite(value), prefix + f.name, value, "expected a finite number")


def _validate(cfg: RunConfig) -> None:
    _check_finite(cfg)
    _check_seed("seed", cfg.seed)
    _check_seed("teacher.seed", cfg.teacher.seed, max(cfg.teacher.ensemble, 1))
    _check(0 <= cfg.alpha <= 1, "alpha", cfg.alpha, "expected a number in [0, 1] (weight of the hard-label loss)")
    _check(
        TEMPERATURES[0] <= cfg.temperature <= TEMPERATURES[1],
        "temperature",
        cfg.temperature,
        f"expected a number in [{TEMPERATURES[0]}, {TEMPERATURES[1]}] (softening; Hinton et al. use 1 to 20)",
    )
    _one_of("soft_loss", cfg.soft_loss, SOFT_LOSSES)
    _one_of("logger.mode", cfg.logger.mode, WANDB_MODES)
    _one_of("device", cfg.device, DEVICES)
    _one_of("precision", cfg.precision, PRECISIONS)
    _one_of("memory_format", cfg.memory_format, MEMORY_FORMATS)
    _one_of("loader", cfg.loader, LOADERS)
    _check(cfg.num_workers >= 0, "num_workers", cfg.num_workers, "expected a whole number >= 0")
    _one_of("optimize_metric", cfg.optimize_metric, (*METRIC_NAMES, "best_student_acc"))
    _check(cfg.checkpoint_every_s >= 0, "checkpoint_every_s", cfg.checkpoint_every_s, "expected a number >= 0")
    _check(all(tag.strip() for tag in cfg.tags), "tags", cfg.tags, "labels that are not empty, e.g. [baseline,paper]")
    _check(cfg.seeds_per_trial >= 1, "seeds_per_trial", cfg.seeds_per_trial, "expected a whole number >= 1")
    cores = os.cpu_count() or 1
    _check(
        0 <= cfg.threads <= cores,
        "threads",
        cfg.threads,
        f"expected a whole number in [0, {cores}] (0: the environment's count)",
    )
    _validate_stage(cfg.teacher, "teacher")
    _validate_stage(cfg.student, "student")
    _check(
        cfg.teacher.epochs > 0 or cfg.teacher.checkpoint is not None,
        "teacher.epochs",
        0,
        "teacher.epochs=0 needs teacher.checkpoint=PATH (a trained teacher's state dict)",
    )
    _check(cfg.teacher.ensemble >= 1, "teacher.ensemble", cfg.teacher.ensemble, "expected a whole number >= 1")
    _check(
        cfg.teacher.ensemble == 1 or cfg.teacher.epochs > 0,
        "teacher.ensemble",
        cfg.teacher.ensemble,
        "1 with teacher.epochs=0 (every member would be the same checkpoint)",
    )
    _validate_dataset(cfg.dataset, "dataset")
    _validate_transfer(cfg)
    _validate_distill(cfg)


def _validate_dataset(d: DatasetConfig, key: str) -> None:
    _validate_target(d.factory, d.name, DATASET_NAMES, f"{key}.factory", f"{key}.name")
    _one_of(f"{key}.val_split", d.val_split, VAL_SPLITS)
    presets = "one of: true, false, " + ", ".join(AUGMENT[2:])
    _check(isinstance(d.augment, (bool, str)) and d.augment in AUGMENT, f"{key}.augment", d.augment, presets)
    _check(len(d.mean) == len(d.std), f"{key}.std", d.std, f"as many values as {key}.mean={d.mean}")
    _check(all(s > 0 for s in d.std), f"{key}.std", d.std, "numbers > 0")
    _check(d.memory_mb >= 0, f"{key}.memory_mb", d.memory_mb, "expected a whole number >= 0")
    _check(
        d.val_split == "holdout" or d.name in WITH_TEST_SPLIT or d.factory["_target_"] is not None,
        f"{key}.val_split",
        d.val_split,
        f"holdout for {d.name} (it has no test split of its own)",
    )
    _check(
        not d.download or d.name in DOWNLOADABLE,
        f"{key}.download",
        d.download,
        f"false for {d.name}: torchvision downloads only " + ", ".join(DOWNLOADABLE),
    )
    _check_seed(f"{key}.split_seed", d.split_seed)
    _check(0 < d.val_fraction < 1, f"{key}.val_fraction", d.val_fraction, "expected a number in (0, 1)")
    _check(d.num_samples >= 2, f"{key}.num_samples", d.num_samples, "expected a whole number >= 2")
    _check(d.image_size >= 4, f"{key}.image_size", d.image_size, "expected a whole number >= 4")
    _check(d.channels > 0, f"{key}.channels", d.channels, "expected a whole number > 0")
    _check(d.name != "fake" or d.channels in (1, 3), f"{key}.channels", d.channels, "1 or 3 for fake")
    _check(d.num_classes >= 2, f"{key}.num_classes", d.num_classes, "expected a whole number >= 2")


def _validate_transfer(cfg: RunConfig) -> None:
    t = cfg.transfer
    if t.dataset is not None:
        _validate_dataset(t.dataset, "transfer.dataset")
    excluded = t.exclude_classes
    _check(
        all(c >= 0 for c in excluded) and len(set(excluded)) == len(excluded),
        "transfer.exclude_classes",
        excluded,
        "distinct class indices >= 0, e.g. [3]",
    )
    _check(
        t.omitted_bias is None or t.omitted_bias == "auto" or _is_number(t.omitted_bias),
        "transfer.omitted_bias",
        t.omitted_bias,
        "auto or a number, e.g. 3.5",
    )
    _check(
        t.omitted_bias is None or len(excluded) > 0,
        "transfer.omitted_bias",
        t.omitted_bias,
        "null unless transfer.exclude_classes names classes left out",
    )
    _check(
        t.omitted_bias != "auto" or (cfg.alpha < 1 and cfg.soft_loss != "mse"),
        "transfer.omitted_bias",
        t.omitted_bias,
        "a number with alpha=1 or soft_loss=mse (auto reads the soft targets at temperature T)",
    )
    _check(
        t.labeled or cfg.alpha == 0,
        "alpha",
        cfg.alpha,
        "0 with transfer.labeled=false (unlabeled transfer data: the hard-label term has no labels)",
    )


def _validate_distill(cfg: RunConfig) -> None:
    cfg.distill.check(cfg)  # each method checks its parameters against the run (kd_runner/methods/<name>.py)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def key_docs(cls: type = RunConfig, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any, str]]:
    """Every key of the schema as (dotted key, default, doc), depth first in declaration order, `distill.*`
    from each method's parameters, a default read from the environment as its rule (metadata `shown`); the
    key lists of `kd-run --help` and docs/configuration.md are generated from it (scripts/config_docs.py)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "distill" and cls is RunConfig:
            yield from _method_key_docs()
        elif dataclasses.is_dataclass(hints[f.name]):
            yield from key_docs(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            yield prefix + f.name, f.metadata.get("shown", default), f.metadata["doc"]


def _method_key_docs() -> typing.Iterator[tuple[str, typing.Any, str]]:
    """distill.method, then each parameter once, with the methods that take it and their defaults."""
    yield "distill.method", "kd", "the method, " + " | ".join(methods.METHODS) + " (distill=NAME; docs/methods.md)"
    takers: dict[str, list] = {}
    for name, method in methods.METHODS.items():
        for f in dataclasses.fields(method.params_type):
            if f.name != "method":
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                takers.setdefault(f.name, []).append((name, default, f.metadata["doc"]))
    for key, taken in takers.items():
        docs: dict[str, list[str]] = {}
        for name, _, doc in taken:
            docs.setdefault(doc, []).append(name)
        text = "; ".join(f"{', '.join(names)}: {doc}" for doc, names in docs.items())
        if len({repr(default) for _, default, _ in taken}) > 1:
            text += " (default: " + ", ".join(f"{name} {default}" for name, default, _ in taken) + ")"
        yield f"distill.{key}", taken[0][1], text
