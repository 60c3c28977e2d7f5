"""Your own soft term, by `distill.objective._target_`: a callable (student_logits, teacher_logits, labels,
temperature[, inputs]) -> loss; the spec's other keys are its arguments (docs/extending.md)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from kd_runner import user_code
from kd_runner.errors import ConfigError, UserError, one_line
from kd_runner.methods import base
from kd_runner.methods.base import Method


@dataclass
class Params(base.Params):
    method: str = field(default="custom", metadata={"doc": "custom: your own soft term (docs/extending.md)"})
    objective: dict[str, typing.Any] = field(
        default_factory=lambda: {"_target_": None},
        metadata={
            "doc": "_target_ names your soft term, a callable (student_logits, teacher_logits, labels, "
            "temperature[, inputs]) -> loss; the other keys are its arguments; see docs/extending.md"
        },
    )

    def check(self, run) -> None:
        super().check(run)
        target = self.objective.get("_target_")
        if not target:
            raise ConfigError("distill.objective._target_", target, "a dotted path module.callable for distill=custom")


class Custom(Method):
    params_type = Params
    parts = ("loss_custom",)
    checks_a_batch = True  # the user's code: called once before any training

    def __init__(self, params: Params, temperature: float, soft_loss: str):
        super().__init__(params, temperature, soft_loss)
        spec = params.objective
        target = user_code.resolve(spec["_target_"], "distill.objective._target_")
        self.takes_inputs = bool(user_code.accepted(target, {"inputs": None}))
        self.fn = user_code.partial(spec, "distill.objective")  # its own keys (nested nodes too) bound once

    def terms(self, student, teacher, labels, inputs):
        given = {"inputs": inputs} if self.takes_inputs else {}
        return {"loss_custom": self.fn(student, teacher, labels, self.temperature, **given)}

    def check_on(self, logits, sample) -> None:
        """Call the objective once, before any training, on `logits` of the student for `sample` (random
        teacher logits of the same shape): a finite scalar tensor that depends on the student's logits, else
        one line naming distill.objective._target_."""
        import torch

        path = self.params.objective["_target_"]
        teacher = torch.randn_like(logits).detach()
        labels = torch.arange(len(logits), device=logits.device) % logits.shape[1]
        try:
            loss = self.terms(logits, teacher, labels, sample)["loss_custom"]
        except Exception as e:
            raise UserError(f"distill.objective._target_={path} fails on one batch: {one_line(e)}") from None
        problem = _problem(loss)
        if problem:
            raise UserError(
                f"distill.objective._target_={path}: {problem} on one batch; expected a finite scalar tensor "
                "computed from student_logits (e.g. a mean over the batch)"
            )


def _problem(loss) -> str | None:
    import torch

    if not isinstance(loss, torch.Tensor):
        return f"it returned a {type(loss).__name__}"
    if loss.numel() != 1:
        return f"it returned a tensor of shape {tuple(loss.shape)}"
    if not torch.isfinite(loss).all():
        return f"it returned {loss.item()}"
    if not loss.requires_grad:
        return "it does not depend on student_logits (no gradient would reach the student)"
    return None
