"""The typed run configuration and its validation.

Hydra composes a plain mapping; `load_config` turns it into these dataclasses and rejects every user
mistake with a `ConfigError` that names the key, the bad value and what is allowed. Nothing below the
CLI sees Hydra: library code receives a `RunConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kd_runner.runtime.compute import MEMORY_FORMATS, PRECISIONS
from kd_runner.errors import ConfigError
from kd_runner.store.files import digest
from kd_runner.train.losses import SOFT_LOSSES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "multistep")
DEVICES = ("auto", "cpu", "cuda", "mps")
FREEZE = ("none", "backbone")
LOADERS = ("memory", "dataloader")
VAL_SPLITS = ("test", "holdout")
# each distillation method and the DistillConfig parameters it takes (conf/distill/<method>.yaml sets their defaults)
METHOD_PARAMS = {
    "kd": (),
    "dkd": ("weight_tckd", "weight_nckd", "warmup"),
    "dist": ("beta", "gamma"),
    "fitnet": ("weight_hint",),
    "at": ("beta",),
    "rkd": ("weight_distance", "weight_angle"),
}
FEATURE_METHODS = ("fitnet", "at", "rkd")
STANDARDIZABLE = ("kd", "dkd")


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str = "data"  # where file-based datasets live
    download: bool = False  # fetch missing files with torchvision (mnist, fashion_mnist, cifar10/100, svhn)
    val_split: str = "holdout"  # test: the dataset's own test/val split; holdout: val_fraction of train
    val_fraction: float = 0.2  # held-out share of train with val_split=holdout
    split_seed: int = 0  # fixes the train/val split independently of the run seed
    augment: bool = True  # the dataset's standard training augmentation (datasets without one ignore it)
    # synthetic and fake: the generated images; imagefolder: image_size is the side after resize + crop
    num_samples: int = 600
    image_size: int = 8
    channels: int = 1
    num_classes: int = 10


@dataclass
class StageConfig:
    """A network and the recipe that trains it (one for the teacher, one for the student)."""

    name: str = "cnn"
    width: int = 32  # small native nets only
    depth: int = 2  # small native nets only
    pretrained: bool = False
    weights_path: typing.Optional[str] = None
    freeze: str = "none"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    step_size: int = 7  # epochs between decays, scheduler=step
    gamma: float = 0.1  # decay factor, scheduler=step and multistep
    milestones: typing.List[int] = field(default_factory=list)  # epochs of the decays, scheduler=multistep


@dataclass
class TeacherConfig(StageConfig):
    seed: int = 0  # the teacher's own seed: a sweep over the run seed reuses one teacher
    checkpoint: typing.Optional[str] = None  # a state dict to start from (required when epochs=0)
    ensemble: int = 1  # number of teachers (seeds seed, seed+1, ...) whose averaged soft targets teach


@dataclass
class TransferConfig:
    """The data the student is distilled on, when it is not the teacher's training set."""

    dataset: typing.Optional[DatasetConfig] = None  # another dataset (None: the run's dataset)
    labeled: bool = True  # false: the transfer set's labels are not used (only alpha=0 is valid)
    exclude_classes: typing.List[int] = field(default_factory=list)  # classes left out of the transfer set


@dataclass
class DistillConfig:
    """The distillation method and its parameters; a parameter is set exactly when the method takes it
    (METHOD_PARAMS). docs/methods.md gives each method's equation and paper."""

    method: str = "kd"  # kd | dkd | dist | fitnet | at | rkd
    standardize: bool = False  # z-score both models' logits before the softmax (kd with kl/soft_ce, dkd)
    weight_tckd: typing.Optional[float] = None  # dkd: weight of the target-class term (the paper's alpha)
    weight_nckd: typing.Optional[float] = None  # dkd: weight of the non-target-class term (the paper's beta)
    warmup: typing.Optional[int] = None  # dkd: epochs over which the DKD term grows linearly to full weight
    beta: typing.Optional[float] = None  # dist: inter-class relation weight; at: the paper's beta
    gamma: typing.Optional[float] = None  # dist: intra-class relation weight
    weight_hint: typing.Optional[float] = None  # fitnet: weight of the hint (MSE) loss
    weight_distance: typing.Optional[float] = None  # rkd: weight of the distance-wise loss
    weight_angle: typing.Optional[float] = None  # rkd: weight of the angle-wise loss
    student_layers: typing.List[str] = field(default_factory=list)  # feature methods ([]: the model's default)
    teacher_layers: typing.List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StageConfig = field(default_factory=StageConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    alpha: float = 0.5  # weight of the hard-label loss: 1 = no distillation, 0 = pure distillation
    temperature: float = 4.0
    soft_loss: str = "kl"
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    cache_dir: str = "outputs/cache"  # fine-tuned teachers and teacher logits, shared by every job of a sweep
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16: autocast of the forward passes
    memory_format: str = "auto"  # auto (channels_last on CUDA and CPU) | channels_last | contiguous, for conv nets
    compile: bool = False  # torch.compile the networks (once per process, reused by every job of a sweep)
    loader: str = "memory"  # memory: whole splits on the device | dataloader: DataLoader workers stream batches
    num_workers: int = 2  # DataLoader worker processes (loader=dataloader)


def load_config(raw: typing.Mapping) -> RunConfig:
    """Build and validate a RunConfig from a plain nested mapping (e.g. Hydra's composed config)."""
    cfg = _build(RunConfig, raw, prefix="")
    _validate(cfg)
    return cfg


def config_digest(cfg) -> str:
    """A short stable digest of a (sub)config: equal digests mean equal settings."""
    return digest(dataclasses.asdict(cfg))


def _build(cls, raw, prefix: str):
    if not isinstance(raw, typing.Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", raw, "expected a group of keys")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(prefix + str(key), raw[key], "unknown key; known keys here: " + ", ".join(sorted(names)))
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kind, value = hints[f.name], raw[f.name]
        key = prefix + f.name
        values[f.name] = _build(kind, value, key + ".") if dataclasses.is_dataclass(kind) else _coerce(key, value, kind)
    return cls(**values)


def _coerce(key: str, value, kind):
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key + ".")
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "expected a list, e.g. [3] or [3, 5]")
        (item,) = typing.get_args(kind)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(key, value, "expected a finite number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "expected a string")
    raise TypeError(f"unsupported config type {kind} for {key}")


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _one_of(key: str, value, options) -> None:
    _check(value in options, key, value, "one of: " + ", ".join(options))


def _validate_stage(stage: StageConfig, key: str) -> None:
    from kd_runner.models import MODEL_NAMES

    _one_of(f"{key}.name", stage.name, MODEL_NAMES)
    _one_of(f"{key}.optimizer", stage.optimizer, OPTIMIZERS)
    _one_of(f"{key}.scheduler", stage.scheduler, SCHEDULERS)
    _one_of(f"{key}.freeze", stage.freeze, FREEZE)
    _check(stage.epochs >= 0, f"{key}.epochs", stage.epochs, "expected a whole number >= 0")
    _check(stage.batch_size > 0, f"{key}.batch_size", stage.batch_size, "expected a whole number > 0")
    _check(stage.lr > 0, f"{key}.lr", stage.lr, "expected a number > 0")
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


def _validate(cfg: RunConfig) -> None:
    from kd_runner.data import dataset_names

    _check(0 <= cfg.alpha <= 1, "alpha", cfg.alpha, "expected a number in [0, 1] (weight of the hard-label loss)")
    _check(cfg.temperature > 0, "temperature", cfg.temperature, "expected a number > 0")
    _one_of("soft_loss", cfg.soft_loss, SOFT_LOSSES)
    _one_of("device", cfg.device, DEVICES)
    _one_of("precision", cfg.precision, PRECISIONS)
    _one_of("memory_format", cfg.memory_format, MEMORY_FORMATS)
    _one_of("loader", cfg.loader, LOADERS)
    _check(cfg.num_workers >= 0, "num_workers", cfg.num_workers, "expected a whole number >= 0")
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
    from kd_runner.data import DOWNLOADABLE, WITH_TEST_SPLIT, dataset_names

    _one_of(f"{key}.name", d.name, dataset_names())
    _one_of(f"{key}.val_split", d.val_split, VAL_SPLITS)
    _check(
        d.val_split == "holdout" or d.name in WITH_TEST_SPLIT,
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
        t.labeled or cfg.alpha == 0,
        "alpha",
        cfg.alpha,
        "0 with transfer.labeled=false (unlabeled transfer data: the hard-label term has no labels)",
    )


def _validate_distill(cfg: RunConfig) -> None:
    d = cfg.distill
    _one_of("distill.method", d.method, tuple(METHOD_PARAMS))
    takes = METHOD_PARAMS[d.method]
    for name in sorted({p for params in METHOD_PARAMS.values() for p in params}):
        value = getattr(d, name)
        if name in takes:
            _check(value is not None and value >= 0, f"distill.{name}", value, f"a number >= 0 for distill={d.method}")
        else:
            allowed = f"unset: distill={d.method} takes " + (", ".join(takes) or "no parameters")
            _check(value is None, f"distill.{name}", value, allowed)
    feature = d.method in FEATURE_METHODS
    for key in ("student_layers", "teacher_layers"):
        value = getattr(d, key)
        _check(feature or not value, f"distill.{key}", value, f"[] for distill={d.method} (it uses logits only)")
    _check(
        not d.standardize or (d.method in STANDARDIZABLE and cfg.soft_loss != "mse"),
        "distill.standardize",
        d.standardize,
        "false except with distill=kd (soft_loss kl or soft_ce) and distill=dkd",
    )
    _check(d.method == "kd" or cfg.soft_loss == "kl", "soft_loss", cfg.soft_loss, "kl unless distill=kd")
    _check(
        d.method != "dkd" or cfg.transfer.labeled,
        "distill.method",
        d.method,
        "not dkd with transfer.labeled=false (DKD needs the labels)",
    )
    _check(not feature or not cfg.compile, "compile", cfg.compile, f"false with distill={d.method} (hooked layers)")
    _check(
        not feature or cfg.teacher.ensemble == 1,
        "teacher.ensemble",
        cfg.teacher.ensemble,
        f"1 with distill={d.method} (features come from one teacher)",
    )
