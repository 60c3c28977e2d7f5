"""The student's objective at run time, for any method: the hard-label term, the method's terms on the
teacher's logits (cached when the inputs repeat) or on both models' features (forward hooks, the teacher
run on the student's batch in inference mode), their running tally for metrics.csv, and the same objective on
the whole validation split. What the method trains or must keep across a resume (FitNets' regressors, the
tally) lives in `MethodState`, trained and checkpointed with the student as one module (`Distilled`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_runner.errors import UserError
from kd_runner.methods.base import Method, combine
from kd_runner.methods.features import FeatureTap, default_layers, paired_stages, probe, size_stages, stage_layers


class MethodState(nn.Module):
    """The method's trainable parameters (`trainable`, FitNets only) and the running sums of the loss parts
    over the epoch in progress, kept as buffers so that a resumed epoch reports the same means."""

    def __init__(self, method: Method, trainable: nn.Module | None = None):
        super().__init__()
        self.parts = ("loss_ce", *method.parts)
        self.trainable = trainable
        self.register_buffer("sums", torch.zeros(len(self.parts)))
        self.register_buffer("counts", torch.zeros(len(self.parts)))

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
    """The loss of the student stage (the engine's LossFn) and the same objective on validation; the one
    place where alpha meets a method's terms."""

    def __init__(self, method: Method, alpha: float, state: MethodState, targets, taps, val_batch: int):
        self.method, self.alpha, self.state, self.targets, self.taps = method, alpha, state, targets, taps
        self.val_batch = val_batch  # feature terms on validation: batch means over batches of this size

    def __call__(self, logits: Tensor, idx: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        parts = self.parts(logits, labels, lambda: self._teacher_side(idx, inputs), inputs, idx)
        self.state.tally(parts, len(idx))
        return combine(self.alpha, parts)

    def parts(self, logits: Tensor, labels, teacher, inputs, idx: Tensor | None = None) -> dict[str, Tensor]:
        """loss_ce (alpha > 0) and the method's terms (alpha < 1) on one batch; `teacher()` gives the teacher's
        side (logits, or both models' features) only when a term needs it; `idx`: the training batch's rows
        (None on validation)."""
        parts = {"loss_ce": F.cross_entropy(logits.float(), labels)} if self.alpha > 0 else {}
        if self.alpha < 1:
            student, teacher_side = (logits, teacher()) if self.taps is None else teacher()
            if idx is None:
                parts.update(self.method.terms(student, teacher_side, labels, inputs))
            else:
                parts.update(self.method.batch_terms(student, teacher_side, labels, inputs, idx))
        return parts

    def _teacher_side(self, idx: Tensor, inputs: Tensor):
        if self.taps is None:
            return self.targets.batch(idx, inputs)
        with torch.inference_mode(), self.targets.data.compute.autocast():
            self.targets.teacher(inputs)
        teacher = [f.clone() for f in self.taps[1].features()]  # cloned outside inference mode: ordinary tensors
        return self.taps[0].features(), teacher

    def validation(self, model: nn.Module, data, logits: Tensor, labels: Tensor) -> float:
        """The objective on the whole validation split (feature terms: batch mean over its batches), at the
        method's current epoch; nothing of the training state changes."""
        if self.taps is None or self.alpha == 1:
            return combine(self.alpha, self.parts(logits, labels, lambda: self.targets.val_targets, None)).item()
        parts = {"loss_ce": F.cross_entropy(logits.float(), labels)} if self.alpha > 0 else {}
        return combine(self.alpha, {**parts, **self._validation_features(model, data)}).item()

    def _validation_features(self, model: nn.Module, data) -> dict[str, Tensor]:
        sums, n = {}, 0
        model.eval()
        with torch.inference_mode(), data.compute.autocast():
            for images in data.eval_batches(data.val.images, self.val_batch):
                x = data.normalize(images)
                model(x)
                self.targets.teacher(x)
                terms = self.method.terms(self.taps[0].features(), self.taps[1].features(), None, None)
                sums = {k: sums.get(k, 0) + v.float() * len(x) for k, v in terms.items()}
                n += len(x)
        model.train()
        return {k: torch.tensor(data.shard.mean(v, n)) for k, v in sums.items()}

    def close(self) -> None:
        """Remove the feature hooks: the models compute as before the stage."""
        for tap in self.taps or ():
            tap.remove()


def build(method: Method, alpha: float, student: nn.Module, targets, data, batch_size: int):
    """The trainable module (student + method state, on the student's device) and the objective (its
    feature terms on validation over batches of the student's `batch_size`). At alpha=1 no term is computed:
    no hooks and no modules of the method, so the student trains exactly as it would under any method."""
    if method.needs == "logits" or alpha == 1:
        state = MethodState(method)
        return Distilled(student, state.to(data.device)), Objective(method, alpha, state, targets, None, batch_size)
    p = method.params
    taps = feature_taps(method, p.student_layers, p.teacher_layers, student, targets.teacher, sample_batch(data))
    method.attach(data.train.labels, taps[0].modules, taps[1].modules)
    trainable = method.trainable(taps[0].features(), taps[1].features())  # the shapes of feature_taps' probe
    state = data.compute.prepare(MethodState(method, trainable))
    return Distilled(student, state), Objective(method, alpha, state, targets, taps, batch_size)


class InitTerms(Method):
    """A method's init stage seen as a method of its own (its needs, parts, trainable modules and terms), so
    that the same Objective trains, tallies and validates it at alpha=0 (no hard-label term)."""

    def __init__(self, method: Method):
        super().__init__(method.params, method.temperature, method.soft_loss)
        self.method, self.needs, self.parts = method, method.init_needs, method.init_parts

    def check_feature(self, key: str, name: str, feature: Tensor) -> None:
        self.method.check_feature(key, name, feature)

    def trainable(self, student, teacher):
        return self.method.init_trainable(student, teacher)

    def terms(self, student, teacher, labels, inputs):
        return self.method.init_terms(student, teacher)


class InitStage(Distilled):
    """The init stage's module: the student stays in eval mode (its BatchNorm statistics fixed) while the
    method's modules train, as RepDistiller's init does (model_s.eval(), init_modules.train())."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.student.eval()
        return self


def build_init(method: Method, student: nn.Module, targets, data, batch_size: int):
    """The init stage's trainable module and its objective (the sum of the method's init terms)."""
    model, loss = build(InitTerms(method), 0.0, student, targets, data, batch_size)
    return InitStage(model.student, model.state), loss


def sample_batch(data) -> Tensor:
    """Two normalised validation images: enough to run a model once and see its layers' shapes."""
    return data.normalize(next(iter(data.eval_batches(data.val.images[:2], 2))))


def feature_taps(method: Method, student_layers, teacher_layers, student, teacher, sample):
    """Hooks on the configured (or default) layers of both models; one line for a layer that is not
    there, a count that differs, or activations of the wrong shape for the method."""
    embedding = method.needs == "embedding"
    if method.needs == "paired_stages" and not student_layers and not teacher_layers:
        student_layers, teacher_layers = paired_stages(student, teacher, sample, method.params.method)
    s_names = student_layers or _default_layers(method, student, sample, "distill.student_layers")
    t_names = teacher_layers or _default_layers(method, teacher, sample, "distill.teacher_layers")
    if method.needs == "stages" and not student_layers and not teacher_layers:
        n = min(len(s_names), len(t_names))  # the deepest stages pair up (mdistiller's _align_list)
        s_names, t_names = s_names[-n:], t_names[-n:]
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
                    f"distill={method.params.method} needs feature maps (N x C x H x W): name a convolutional layer"
                )
            method.check_feature(f"distill.{key}_layers", name, f)
    return taps


def _default_layers(method: Method, model: nn.Module, sample: Tensor, key: str) -> list[str]:
    if method.needs == "stages":
        return stage_layers(model, sample, key)
    if method.needs == "paired_stages":  # the other model's layers are named: this one's stages, by size
        return [name for name, _ in size_stages(model, sample).values()]
    return default_layers(model, sample, method.needs == "embedding", key)


def check_on_batch(method: Method, student: nn.Module, data) -> None:
    """A method that checks itself on one batch (distill=custom: the user's objective) gets the student's
    logits for two validation images (one line if unfit)."""
    if method.checks_a_batch:
        sample = sample_batch(data)
        method.check_on(student(sample).float(), sample)
