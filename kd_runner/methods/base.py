"""What every distillation method is: its typed parameters (`Params`, a dataclass registered as an option of
the `distill` config group) and its terms (`Method`), the named parts of the soft side of

    loss = alpha * loss_ce + (1 - alpha) * (sum of the method's parts)

Both import nothing heavy: kd-run checks a config, and answers --help, without loading torch; a method's
maths imports torch where it computes.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from kd_runner.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn


@dataclass
class Params:
    """The parameters every method shares: its name. A method's own dataclass adds its parameters, with the
    defaults of its reference code; a weight must be a finite number >= 0."""

    method: str = field(default="kd", metadata={"doc": "the method; distill=NAME picks it (docs/methods.md)"})

    soft_losses: ClassVar[tuple[str, ...]] = ("kl",)  # the top-level soft_loss values the method reads

    def check(self, run) -> None:
        """Refuse (ConfigError) a setting this method cannot train with; `run` is the whole RunConfig."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"distill.{f.name}", value, f"a number >= 0 for distill={self.method}")
        if run.soft_loss not in self.soft_losses:
            raise ConfigError("soft_loss", run.soft_loss, "kl unless distill=kd")


@dataclass
class LogitParams(Params):
    """A logit method that may z-score both models' logits first (logit standardisation)."""

    standardize: bool = field(default=False, metadata={"doc": "z-score both models' logits before the softmax"})

    def check(self, run) -> None:
        super().check(run)
        if self.standardize and run.soft_loss == "mse":
            raise ConfigError("distill.standardize", True, "false with soft_loss=mse (it compares raw logits)")


@dataclass
class FeatureParams(Params):
    """A method that reads activations at paired layers of both models (forward hooks)."""

    student_layers: list[str] = field(
        default_factory=list, metadata={"doc": "the student's layers ([]: the model's default)"}
    )
    teacher_layers: list[str] = field(
        default_factory=list, metadata={"doc": "the teacher's layers, paired with student_layers"}
    )

    def check(self, run) -> None:
        super().check(run)
        if run.compile:
            raise ConfigError("compile", True, f"false with distill={self.method} (hooked layers)")
        if run.teacher.ensemble != 1:
            raise ConfigError(
                "teacher.ensemble",
                run.teacher.ensemble,
                f"1 with distill={self.method} (features come from one teacher)",
            )


@dataclass
class InitParams(FeatureParams):
    """A method that first trains part of the student (or modules of its own) in an initialisation stage, on
    features of both models, before the student stage (RepDistiller's `init`, helper/pretrain.py)."""

    init_epochs: int = field(
        default=30, metadata={"doc": "epochs of the init stage before distillation (0: none; RepDistiller's 30)"}
    )
    init_lr: float = field(default=0.0, metadata={"doc": "the init stage's constant learning rate (0: student.lr)"})

    def check(self, run) -> None:
        super().check(run)
        if self.init_epochs < 0:
            raise ConfigError("distill.init_epochs", self.init_epochs, "a whole number >= 0 (0: no init stage)")


class Method(ABC):
    """A method's soft terms. `needs`: what it reads from both models, "logits", "maps" (N x C x H x W
    activations), "stages" (maps, by default one per stage of each model), "paired_stages" (two or more maps
    of equal widths in both models, by default their stages paired by spatial size: KDSVD, FSP) or
    "embedding" (one flattened layer). `parts`: the names of its terms (metrics.csv columns). One instance
    serves one run: `start_epoch` tells it the epoch being trained (1-based)."""

    params_type: ClassVar[type[Params]] = Params
    parts: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[str] = "logits"
    checks_a_batch: ClassVar[bool] = False  # `check_on` the student's logits of one batch before training
    init_needs: ClassVar[str | None] = None  # what the init stage reads ("maps", "stages"); None: no init stage
    init_parts: ClassVar[tuple[str, ...]] = ()  # the init stage's terms (metrics.csv columns of its rows)
    init_trains_student: ClassVar[bool] = True  # False: only the method's init modules train in it (FT)

    def __init__(self, params: Params, temperature: float, soft_loss: str):
        self.params, self.temperature, self.soft_loss = params, temperature, soft_loss
        self.epoch = 1
        self.train_labels: Tensor | None = None  # set by `attach`
        self.layers: tuple[list[nn.Module], list[nn.Module]] = ([], [])

    def attach(self, train_labels: Tensor, student_layers: list, teacher_layers: list) -> None:
        """Before `trainable`: the labels of the training split that a batch's `idx` indexes (CRD keeps a row per
        sample) and the hooked modules of both models (OFD reads the teacher's BatchNorm)."""
        self.train_labels, self.layers = train_labels, (list(student_layers), list(teacher_layers))

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def trainable(self, student: list[Tensor], teacher: list[Tensor]) -> nn.Module | None:
        """Parameters the method trains with the student, shaped by one batch of both models' features
        (FitNets' regressors); None for most methods."""
        return None

    @property
    def has_init(self) -> bool:
        """Whether the run trains an init stage before the student stage."""
        return self.init_needs is not None and self.params.init_epochs > 0

    def init_trainable(self, student: list[Tensor], teacher: list[Tensor]) -> nn.Module | None:
        """The init stage's own parameters (AB's connectors, FT's paraphraser), shaped by one batch's features."""
        return None

    def init_terms(self, student: list[Tensor], teacher: list[Tensor]) -> dict[str, Tensor]:
        """The init stage's parts on one batch of both models' features (`init_needs`); their sum is its loss.
        Only a method with `init_needs` has an init stage, and it must say what the stage computes."""
        raise TypeError(f"{type(self).__name__} has no init stage (init_needs is None)")

    def check_on(self, logits: Tensor, sample: Tensor) -> None:
        """Refuse (one line) a method that cannot train on the student's `logits` for the batch `sample`."""
        return None  # by default every batch is fine

    def check_feature(self, key: str, name: str, feature: Tensor) -> None:
        """Refuse (one line) an activation of layer `name` the method would learn nothing from; `key` names
        the setting (distill.student_layers or distill.teacher_layers)."""
        return None  # by default every activation is fine

    @abstractmethod
    def terms(self, student, teacher, labels: Tensor | None, inputs: Tensor | None) -> dict[str, Tensor]:
        """The method's parts on one batch: logits (N x C) or lists of features of both models. `inputs`: the
        normalised batch (None on the whole validation split); `labels` None on unlabeled data."""

    def batch_terms(self, student, teacher, labels: Tensor | None, inputs: Tensor, idx: Tensor) -> dict[str, Tensor]:
        """The parts on a training batch whose samples are rows `idx` of the training split; `terms` unless the
        method keeps a state per sample (CRD's memory bank), which only training batches update."""
        return self.terms(student, teacher, labels, inputs)


def combine(alpha: float, parts: dict[str, Tensor]) -> Tensor:
    """alpha * loss_ce + (1 - alpha) * the sum of the method's parts; a term of weight zero is absent
    (alpha=1: exactly the cross-entropy; alpha=0: no labels needed)."""
    if alpha == 1:
        return parts["loss_ce"]
    method = [v for k, v in parts.items() if k != "loss_ce"]
    soft = sum(method[1:], method[0])
    if alpha == 0:
        return soft
    return alpha * parts["loss_ce"] + (1 - alpha) * soft
