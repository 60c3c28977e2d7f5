"""The student's objective for every distillation method (`distill=`), one convention:

    loss = alpha * loss_ce + (1 - alpha) * (sum of the method's weighted parts)

``alpha`` weighs the hard-label cross-entropy everywhere (1: no distillation). Logit methods (kd, dkd,
dist) use the teacher's logits (cached when the inputs repeat); feature methods (fitnet, at, rkd) run
the teacher on each batch in inference mode and read both models' activations by forward hooks. The
parts are tallied per epoch for metrics.csv. What a method trains or must keep across a resume (the
FitNet regressors, the tally, the epoch for DKD's warm-up) lives in `MethodState`, trained and
checkpointed with the student as one module (`Distilled`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_runner import user_code
from kd_runner.config import FEATURE_METHODS, RunConfig
from kd_runner.errors import UserError, one_line
from kd_runner.train import feature_losses as fl
from kd_runner.train.features import FeatureTap, default_layers, probe
from kd_runner.train.logit_losses import dist_terms, dkd_terms, standardize
from kd_runner.train.losses import soft_loss

METHOD_PARTS = {
    "kd": ("loss_kd",),
    "dkd": ("loss_tckd", "loss_nckd"),
    "dist": ("loss_inter", "loss_intra"),
    "fitnet": ("loss_hint",),
    "at": ("loss_at",),
    "rkd": ("loss_rkd_distance", "loss_rkd_angle"),
    "custom": ("loss_custom",),
}
PART_COLUMNS = ("loss_ce", *(p for parts in METHOD_PARTS.values() for p in parts))


class MethodState(nn.Module):
    """A method's trainable parameters (`regressors`, FitNets only) and the running sums of the loss
    parts over the epoch in progress, kept as buffers so that a resumed epoch reports the same means."""

    def __init__(self, method: str, regressors: nn.Module | None = None):
        super().__init__()
        self.parts = ("loss_ce", *METHOD_PARTS[method])
        self.regressors = regressors
        self.register_buffer("sums", torch.zeros(len(self.parts)))
        self.register_buffer("counts", torch.zeros(len(self.parts)))
        self.register_buffer("epoch", torch.ones((), dtype=torch.long))  # 1-based, for DKD's warm-up

    def tally(self, parts: dict[str, Tensor], samples: int) -> None:
        for i, name in enumerate(self.parts):
            if name in parts:
                self.sums[i] += parts[name].detach() * samples
                self.counts[i] += samples

    def take_parts(self, shard) -> dict[str, float]:
        """The epoch's mean of every part computed in it (over all processes), then a fresh tally."""
        means = {n: shard.mean(self.sums[i], int(self.counts[i])) for i, n in enumerate(self.parts) if self.counts[i]}
        self.sums.zero_()
        self.counts.zero_()
        return means


class Distilled(nn.Module):
    """The student and its method state as one module: one optimizer, one checkpoint. Its forward is the student's."""

    def __init__(self, student: nn.Module, state: MethodState):
        super().__init__()
        self.student, self.state = student, state

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


class Objective:
    """The loss function of the student stage (the engine's LossFn) and its value on validation."""

    def __init__(self, cfg: RunConfig, state: MethodState, targets, taps: tuple[FeatureTap, FeatureTap] | None):
        self.cfg, self.d, self.state, self.targets, self.taps = cfg, cfg.distill, state, targets, taps
        self.custom = user_objective(cfg) if cfg.distill.method == "custom" else None

    def __call__(self, logits: Tensor, idx: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        parts = {}
        if self.cfg.alpha > 0:
            parts["loss_ce"] = F.cross_entropy(logits.float(), labels)
        if self.cfg.alpha < 1:
            if self.taps is None:
                parts.update(self.logit_parts(logits, self.targets.batch(idx, inputs), labels, inputs))
            else:
                parts.update(self.feature_parts(self.taps[0].features(), self._teacher_features(inputs)))
        self.state.tally(parts, len(idx))
        return self.combine(parts)

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        """alpha * loss_ce + (1 - alpha) * the method's parts (a term of weight zero is absent)."""
        method = [v for k, v in parts.items() if k != "loss_ce"]
        if self.cfg.alpha == 1:
            return parts["loss_ce"]
        soft = sum(method[1:], method[0])
        if self.cfg.alpha == 0:
            return soft
        return self.cfg.alpha * parts["loss_ce"] + (1 - self.cfg.alpha) * soft

    def logit_parts(self, student: Tensor, teacher: Tensor, labels: Tensor, inputs=None) -> dict[str, Tensor]:
        d, temperature = self.d, self.cfg.temperature
        if self.custom is not None:  # inputs: the normalised batch; None on the whole validation split
            return {"loss_custom": self.custom(student, teacher, labels, temperature, inputs)}
        if d.standardize:
            student, teacher = standardize(student), standardize(teacher.detach())
        if d.method == "kd":
            return {"loss_kd": soft_loss(student, teacher, temperature, self.cfg.soft_loss)}
        if d.method == "dist":
            inter, intra = dist_terms(student, teacher, temperature)
            return {"loss_inter": d.beta * inter, "loss_intra": d.gamma * intra}
        tckd, nckd = dkd_terms(student, teacher, labels, temperature)
        warm = min(int(self.state.epoch) / d.warmup, 1.0) if d.warmup else 1.0  # the paper's warm-up
        scale = temperature * temperature * warm
        return {"loss_tckd": d.weight_tckd * scale * tckd.mean(), "loss_nckd": d.weight_nckd * scale * nckd.mean()}

    def feature_parts(self, student: list[Tensor], teacher: list[Tensor]) -> dict[str, Tensor]:
        d = self.d
        if d.method == "fitnet":
            return {"loss_hint": d.weight_hint * self.state.regressors(student, teacher)}
        if d.method == "at":
            return {"loss_at": d.beta / 2 * fl.attention_loss(student, teacher)}
        return {
            "loss_rkd_distance": d.weight_distance * fl.rkd_distance(student[0], teacher[0]),
            "loss_rkd_angle": d.weight_angle * fl.rkd_angle(student[0], teacher[0]),
        }

    def close(self) -> None:
        """Remove the feature hooks: the models compute as before the stage."""
        for tap in self.taps or ():
            tap.remove()

    def _teacher_features(self, inputs: Tensor) -> list[Tensor]:
        """The teacher's activations on the student's batch, in inference mode (never in the student's graph)."""
        with torch.inference_mode(), self.targets.data.compute.autocast():
            self.targets.teacher(inputs)
        return [f.clone() for f in self.taps[1].features()]  # cloned outside inference mode: ordinary tensors

    def validation(self, model: nn.Module, data, logits: Tensor, labels: Tensor) -> float:
        """The objective on the whole validation split (feature terms: batch mean over its batches)."""
        parts = {"loss_ce": F.cross_entropy(logits.float(), labels)} if self.cfg.alpha > 0 else {}
        if self.cfg.alpha < 1 and self.taps is None:
            parts.update(self.logit_parts(logits, self.targets.val_targets, labels))
        elif self.cfg.alpha < 1:
            parts.update(self._validation_features(model, data))
        return self.combine(parts).item()

    def _validation_features(self, model: nn.Module, data) -> dict[str, Tensor]:
        sums, n = {}, 0
        model.eval()
        with torch.inference_mode(), data.compute.autocast():
            for images in data.eval_batches(data.val.images, self.cfg.student.batch_size):
                x = data.normalize(images)
                model(x)
                self.targets.teacher(x)
                parts = self.feature_parts(self.taps[0].features(), self.taps[1].features())
                sums = {k: sums.get(k, 0) + v.float() * len(x) for k, v in parts.items()}
                n += len(x)
        model.train()
        return {k: torch.tensor(data.shard.mean(v, n)) for k, v in sums.items()}


def build(cfg: RunConfig, student: nn.Module, targets, data) -> tuple[Distilled, Objective]:
    """The trainable module (student + method state, on the student's device) and the objective."""
    if cfg.distill.method not in FEATURE_METHODS:
        state = MethodState(cfg.distill.method)
        return Distilled(student, state.to(data.device)), Objective(cfg, state, targets, None)
    taps = feature_taps(cfg, student, targets.teacher, sample_batch(data))
    regressors = None
    if cfg.distill.method == "fitnet":  # the taps hold the shapes of the probe in feature_taps
        s_channels = [f.shape[1] for f in taps[0].features()]
        regressors = fl.HintRegressors(s_channels, [f.shape[1] for f in taps[1].features()])
    state = data.compute.prepare(MethodState(cfg.distill.method, regressors))
    return Distilled(student, state), Objective(cfg, state, targets, taps)


def user_objective(cfg: RunConfig):
    """distill=custom: the user's soft term `distill.objective._target_`, called as (student_logits,
    teacher_logits, labels, temperature) plus `inputs` when it takes them by name and the spec's other keys."""
    spec = cfg.distill.objective
    fn = user_code.resolve(spec["_target_"], "distill.objective._target_")
    takes_inputs = bool(user_code.accepted(fn, {"inputs": None}))
    extra = {k: v for k, v in spec.items() if k != "_target_"}

    def objective(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float, inputs) -> Tensor:
        return fn(student, teacher, labels, temperature, **({"inputs": inputs} if takes_inputs else {}), **extra)

    return objective


def check_objective(cfg: RunConfig, student: nn.Module, sample: Tensor) -> None:
    """Call distill=custom's objective once, before any training, on the logits of `student` for `sample`
    (random teacher logits of the same shape): it must return a finite scalar tensor that depends on the
    student's logits, else one line naming distill.objective._target_."""
    path = cfg.distill.objective["_target_"]
    logits = student(sample).float()
    teacher, labels = (
        torch.randn_like(logits).detach(),
        torch.arange(len(logits), device=logits.device) % logits.shape[1],
    )
    try:
        loss = user_objective(cfg)(logits, teacher, labels, cfg.temperature, sample)
    except Exception as e:
        raise UserError(f"distill.objective._target_={path} fails on one batch: {one_line(e)}") from None
    problem = None
    if not isinstance(loss, Tensor):
        problem = f"it returned a {type(loss).__name__}"
    elif loss.numel() != 1:
        problem = f"it returned a tensor of shape {tuple(loss.shape)}"
    elif not torch.isfinite(loss).all():
        problem = f"it returned {loss.item()}"
    elif not loss.requires_grad:
        problem = "it does not depend on student_logits (no gradient would reach the student)"
    if problem:
        raise UserError(
            f"distill.objective._target_={path}: {problem} on one batch; expected a finite scalar tensor "
            "computed from student_logits (e.g. a mean over the batch)"
        )


def sample_batch(data) -> Tensor:
    """Two normalised validation images: enough to run a model once and see its layers' shapes."""
    return data.normalize(next(iter(data.eval_batches(data.val.images[:2], 2))))


def feature_taps(
    cfg: RunConfig, student: nn.Module, teacher: nn.Module, sample: Tensor
) -> tuple[FeatureTap, FeatureTap]:
    """Hooks on the configured (or default) layers of both models; one line for a layer that is not
    there, a count that differs, or activations of the wrong shape for the method."""
    d, embedding = cfg.distill, cfg.distill.method == "rkd"
    s_names = d.student_layers or default_layers(student, sample, embedding, "distill.student_layers")
    t_names = d.teacher_layers or default_layers(teacher, sample, embedding, "distill.teacher_layers")
    if len(s_names) != len(t_names) or (embedding and len(s_names) != 1):
        allowed = "one layer each" if embedding else "the same number of layers"
        raise UserError(f"distill.student_layers: {s_names} against distill.teacher_layers {t_names}; {allowed}")
    taps = (
        FeatureTap(student, s_names, "distill.student_layers", embedding),
        FeatureTap(teacher, t_names, "distill.teacher_layers", embedding),
    )
    for tap, model, key in zip(taps, (student, teacher), ("student", "teacher")):
        probe(model, sample)
        for name, f in zip(tap.names, tap.features()):
            if not embedding and f.dim() != 4:
                raise UserError(
                    f"distill.{key}_layers: layer {name!r} of the {key} outputs {tuple(f.shape)}; "
                    f"distill={d.method} needs feature maps (N x C x H x W): name a convolutional layer"
                )
    return taps
