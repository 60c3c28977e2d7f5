"""Optimizers and learning-rate schedules: stepped per batch, they decay at the epochs the recipe names."""

from __future__ import annotations

import pytest
import torch

from kd_runner.config import StageConfig
from kd_runner.train.optim import make_optimizer, make_scheduler


def epoch_lrs(stage: StageConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate at the start of each epoch, stepping the scheduler once per batch."""
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model.parameters(), stage)
    scheduler = make_scheduler(optimizer, stage, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(stage.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            optimizer.step()
            scheduler.step()
    return lrs


def test_multistep_decays_at_the_milestone_epochs():
    stage = StageConfig(lr=0.05, scheduler="multistep", milestones=[2, 4], gamma=0.1, epochs=5)
    assert epoch_lrs(stage, steps_per_epoch=3) == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])


def test_step_decays_every_step_size_epochs_like_the_per_epoch_steplr():
    stage = StageConfig(lr=0.1, scheduler="step", step_size=2, gamma=0.5, epochs=5)
    assert epoch_lrs(stage, steps_per_epoch=4) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    optimizer = make_optimizer(model.parameters(), StageConfig(optimizer="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(model[1].parameters())
