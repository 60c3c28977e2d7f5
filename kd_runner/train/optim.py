"""A stage's optimizer and learning-rate schedule, both built from its recipe (`StageConfig`): a short name
(sgd, adam, adamw; none, step, multistep, cosine, onecycle) or a `_target_` node of the user's
(kd_runner.user_code: Hydra's instantiate under kd-run, `_partial_` semantics: the parameters come later)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kd_runner import user_code
from kd_runner.config import StageConfig


def make_optimizer(params, stage: StageConfig, key: str = "optimizer") -> torch.optim.Optimizer:
    """The stage's optimizer over the parameters that train (a frozen backbone's are left out). A node is
    given the parameters, and the recipe's `lr` and `weight_decay` where it takes them and does not set them.
    On CUDA a named optimizer's step is fused: one kernel per group of parameters instead of a few per
    tensor (a small network's step is otherwise bound by kernel launches)."""
    params = [p for p in params if p.requires_grad]
    if isinstance(stage.optimizer, Mapping):
        offered = {"lr": stage.lr, "weight_decay": stage.weight_decay}
        return user_code.call(stage.optimizer, key, offered, args=(params,))
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, **fused)
    raise ValueError(f"unknown optimizer {stage.optimizer}")


def make_scheduler(optimizer, stage: StageConfig, steps_per_epoch: int, key: str = "scheduler"):
    """Stepped once per batch; `step` decays every `step_size` epochs, exactly as the per-epoch StepLR. A node
    is given the optimizer, and `total_steps` (the stage's batches) where it takes it and does not set it;
    its step counts are batches."""
    total = max(1, stage.epochs * steps_per_epoch)
    if isinstance(stage.scheduler, Mapping):
        return user_code.call(stage.scheduler, key, {"total_steps": total}, args=(optimizer,))
    if stage.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if stage.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, stage.step_size * steps_per_epoch, stage.gamma)
    if stage.scheduler == "multistep":
        milestones = [m * steps_per_epoch for m in stage.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, stage.gamma)
    if stage.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    if stage.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=stage.lr, total_steps=total)
    raise ValueError(f"unknown scheduler {stage.scheduler}")
