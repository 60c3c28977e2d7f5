"""What a run says about itself at its start and in its record: its config tree in the log, its tags;
and a student started from a previous run's student.pt (lightning-hydra-template's ckpt_path)."""

from __future__ import annotations

import json

import torch
from helpers import compose_config, usage_error_line

from kd_runner import run
from kd_runner.config import config_digest
from kd_runner.data import build_dataset
from kd_runner.models import build_stage_model


def test_the_config_tree_opens_the_runs_log(smoke_run):
    cwd, proc = smoke_run
    log = (cwd / "run1" / "kd-run.log").read_text()
    assert "config of this run:\nteacher:\n  name: cnn\n" in log and "\nthreads: 0\n" in log
    assert log.index("config of this run:") < log.index("teacher epoch 1/2")
    assert "config of this run:" in proc.stdout + proc.stderr  # a single run prints it on the console too


def test_tags_are_recorded_and_are_no_part_of_the_runs_identity(tmp_path):
    cfg = compose_config("experiment=smoke", "student.epochs=1", "tags=[baseline,paper]")
    record = run.run(cfg, tmp_path / "run")
    assert record["tags"] == json.loads((tmp_path / "run" / "result.json").read_text())["tags"] == ["baseline", "paper"]
    assert config_digest(cfg) == config_digest(compose_config("experiment=smoke", "student.epochs=1"))


def test_an_empty_tag_is_one_line(tmp_path, capsys):
    err = usage_error_line(["experiment=smoke", "tags=[a,'']", f"hydra.run.dir={tmp_path}/r"], capsys)
    assert err == "kd-run: error: tags=['a', ''] is not allowed: labels that are not empty, e.g. [baseline,paper]"


def test_a_student_starts_from_a_previous_runs_student_pt(tmp_path):
    run.run(compose_config("experiment=smoke", "student.epochs=1"), tmp_path / "first")
    saved = tmp_path / "first" / "student.pt"
    cfg = compose_config("experiment=smoke", "student.epochs=1", f"student.weights_path={saved}")
    started = build_stage_model(cfg.student, build_dataset(cfg.dataset), "student").state_dict()
    assert all(torch.equal(started[k], v) for k, v in torch.load(saved, weights_only=True).items())
    again = run.run(cfg, tmp_path / "again")  # one more epoch from there
    assert again["status"] == "completed" and again["config"]["student"]["weights_path"] == str(saved)
