"""A stage's optimizer and learning-rate schedule, both built from its recipe (`StageConfig`)."""

from __future__ import annotations

import torch

from kd_runner.config import StageConfig


def make_optimizer(params, stage: StageConfig) -> torch.optim.Optimizer:
    """The stage's optimizer over the parameters that train (a frozen backbone's are left out). On CUDA its
    step is fused: one kernel per group of parameters instead of a few per tensor (a small network's step
    is otherwise bound by kernel launches)."""
    params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, **fused)
    raise ValueError(f"unknown optimizer {stage.optimizer}")


def make_scheduler(optimizer, stage: StageConfig, steps_per_epoch: int):
    """Stepped once per batch; `step` decays every `step_size` epochs, exactly as the per-epoch StepLR."""
    total = max(1, stage.epochs * steps_per_epoch)
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
