"""Every `_target_` node goes through Hydra's own instantiate (kd-run's CLI binds it; the library does not
import Hydra): `_partial_`, `_args_` and nested nodes in networks, soft terms, optimizers and schedules,
while the short names (sgd, adamw, cosine, ...) stay."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import hydra.utils
import pandas as pd
import pytest
import torch
from helpers import compose_config, usage_error_line

from kd_runner import run, user_code
from kd_runner.errors import UserError
from kd_runner.train.optim import make_optimizer, make_scheduler

ADAMW = "student.optimizer={_target_: torch.optim.AdamW, lr: 0.01, betas: [0.8,0.9]}"
NESTED = "+student.model={_target_: torch.nn.Sequential, _args_: [{_target_: torch.nn.Flatten}, {_target_: torch.nn.LazyLinear, out_features: 10}]}"  # noqa: E501


def parameters() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def test_an_optimizer_node_gets_the_parameters_and_the_recipes_other_values():
    stage = compose_config(ADAMW, "student.weight_decay=0.01").student
    assert isinstance(stage.optimizer, user_code.Target) and stage.optimizer.instantiate is hydra.utils.instantiate
    optimizer = make_optimizer(parameters(), stage)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.01, (0.8, 0.9), 0.01)  # the node's lr wins


def test_a_partial_optimizer_node_and_a_scheduler_node_given_its_total_steps():
    stage = compose_config(
        "student.optimizer={_target_: torch.optim.SGD, _partial_: true, momentum: 0.5}",
        "student.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, max_lr: 0.1}",
        "student.epochs=3",
    ).student
    optimizer = make_optimizer(parameters(), stage)
    assert optimizer.param_groups[0]["momentum"] == 0.5 and optimizer.param_groups[0]["lr"] == 0.05  # recipe's lr
    scheduler = make_scheduler(optimizer, stage, steps_per_epoch=7)
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps == 21


def test_nested_nodes_and_args_build_the_users_network_end_to_end(tmp_path):
    cfg = compose_config(
        "experiment=smoke",
        "student.name=seq",
        NESTED,
        ADAMW,
        "student.scheduler={_target_: torch.optim.lr_scheduler.LinearLR, start_factor: 0.5, total_iters: 1000}",
    )
    record = run.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["models"]["student"]["params"] == 64 * 10 + 10
    assert record["config"]["student"]["optimizer"] == {
        "_target_": "torch.optim.AdamW",
        "lr": 0.01,
        "betas": [0.8, 0.9],
    }
    lrs = pd.read_csv(tmp_path / "run" / "metrics.csv").query("stage == 'student'")["lr"].tolist()
    assert lrs[0] == pytest.approx(0.005, rel=0.01)  # LinearLR from half the node's lr, stepped per batch
    assert pickle.loads(pickle.dumps(cfg)).student.model.instantiate is hydra.utils.instantiate  # parallel launchers


def test_a_soft_term_node_binds_its_nested_arguments_once():
    spec = user_code.Target(
        {"_target_": "torch.nn.functional.l1_loss", "reduction": {"_target_": "builtins.str", "_args_": ["sum"]}},
        hydra.utils.instantiate,
    )
    loss = user_code.partial(spec, "distill.objective")
    assert loss(torch.ones(2), torch.zeros(2)).item() == 2.0  # reduction="sum", built from its node


def test_an_unbound_node_refuses_what_only_hydra_reads_in_one_line():
    with pytest.raises(UserError, match=r"^student.model._target_=torch.nn.Sequential failed .*_args_ need Hydra"):
        user_code.call({"_target_": "torch.nn.Sequential", "_args_": []}, "student.model", {})
    assert isinstance(
        user_code.call({"_target_": "torch.nn.Linear", "in_features": 2}, "m", {"out_features": 3}), torch.nn.Linear
    )


def test_a_failing_node_is_one_line_with_the_users_error_not_hydras_wrapper():
    spec = user_code.Target({"_target_": "torch.nn.Linear", "in_features": "two"}, hydra.utils.instantiate)
    with pytest.raises(UserError) as exc:
        user_code.call(spec, "student.model", {"out_features": 3})
    arguments = "{'in_features': 'two', 'out_features': 3}"
    assert str(exc.value).startswith(
        f"student.model._target_=torch.nn.Linear failed with arguments {arguments}: TypeError"
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "student.optimizer=rmsprop",
            "student.optimizer='rmsprop' is not allowed: one of: sgd, adam, adamw, or a node",
        ),
        (
            "student.optimizer={_target_: torch.nn.Identity}",
            "a node building a torch.optim.Optimizer (it built a Identity)",
        ),
        ("student.scheduler={lr: 1}", "student.scheduler._target_=None is not allowed: a dotted path"),
    ],
)
def test_a_wrong_optimizer_or_scheduler_is_one_line_before_anything_runs(override, expected, tmp_path, capsys):
    err = usage_error_line(["experiment=smoke", override, f"hydra.run.dir={tmp_path}/r"], capsys)
    assert expected in err
    assert not (tmp_path / "r").exists()


def test_a_bound_node_copies_with_its_binding_and_records_as_a_plain_dict():
    cfg = compose_config(ADAMW)
    for copied in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert copied.student.optimizer.instantiate is hydra.utils.instantiate
        assert copied.student.optimizer == cfg.student.optimizer
    assert type(dataclasses.asdict(cfg)["student"]["optimizer"]) is dict
