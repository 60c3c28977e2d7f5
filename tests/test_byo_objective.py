"""Bring your own objective: distill=custom with distill.objective._target_ from a user package on PYTHONPATH,
used as the soft term under alpha, and checked on one batch before any training."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
from helpers import kd_run, usage_error_line
from test_byo import FAST, user_package  # noqa: F401 (a fixture)

LOSSES = """
import torch
import torch.nn.functional as F


def my_kd(student_logits, teacher_logits, labels, temperature, inputs, scale=1.0):
    assert inputs is None or inputs.shape[0] == student_logits.shape[0]  # None on the validation split
    soft = F.softmax(teacher_logits / temperature, dim=-1)
    return scale * -(soft * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def per_sample(student_logits, teacher_logits, labels, temperature):
    return F.mse_loss(student_logits, teacher_logits, reduction="none").mean(-1)


def nan(student_logits, teacher_logits, labels, temperature):
    return student_logits.sum() * float("nan")


def constant(student_logits, teacher_logits, labels, temperature):
    return torch.tensor(1.0)


def raises(student_logits, teacher_logits, labels, temperature):
    raise ValueError("not written yet")
"""


@pytest.fixture
def losses(user_package):  # noqa: F811
    (user_package / "pkg" / "mypkg" / "losses.py").write_text(textwrap.dedent(LOSSES))
    return user_package


def test_a_user_objective_is_the_soft_term_of_a_real_run(losses):
    out = losses / "run"
    kd_run(
        *FAST,
        "alpha=0.5",
        "distill=custom",
        "distill.objective._target_=mypkg.losses.my_kd",
        "+distill.objective.scale=0.5",
        f"hydra.run.dir={out}",
        f"cache_dir={losses / 'cache'}",
        cwd=losses,
    )
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["distill"]["objective"] == {"_target_": "mypkg.losses.my_kd", "scale": 0.5}
    student = pd.read_csv(out / "metrics.csv").query("stage == 'student'")
    assert student["loss_custom"].notna().all() and (student["loss_custom"] > 0).all()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("per_sample", "it returned a tensor of shape (2,) on one batch; expected a finite scalar tensor"),
        ("nan", "it returned nan on one batch"),
        ("constant", "it does not depend on student_logits"),
        ("raises", "fails on one batch: ValueError: not written yet"),
    ],
)
def test_a_user_objective_that_gives_no_usable_loss_is_one_line_before_the_teacher(
    name, expected, losses, monkeypatch, capsys
):
    monkeypatch.chdir(losses)
    line = usage_error_line(
        [*FAST, "distill=custom", f"distill.objective._target_=mypkg.losses.{name}", "hydra.run.dir=run"], capsys
    )
    assert line.startswith(f"kd-run: error: distill.objective._target_=mypkg.losses.{name}") and expected in line
    assert not (losses / "outputs" / "cache" / "teachers").exists()  # refused before the teacher's fine-tuning
    assert json.loads((losses / "run" / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["distill=custom"], "distill.objective._target_=None is not allowed: a dotted path module.callable"),
        (["distill.objective._target_=mypkg.losses.my_kd"], "distill.objective is not allowed: unknown key"),
    ],
)
def test_distill_custom_and_its_objective_go_together(args, expected, losses, monkeypatch, capsys):
    monkeypatch.chdir(losses)
    line = usage_error_line(["experiment=smoke", *args, "hydra.run.dir=run"], capsys)
    assert expected in line and not (losses / "run").exists()
