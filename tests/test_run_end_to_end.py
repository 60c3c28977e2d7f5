"""Real runs of the smoke config: through the `kd-run` script, and through Hydra's compose API."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from helpers import compose_config, kd_run, read_run

from kd_runner import run
from kd_runner.names import METRIC_NAMES, TOP5_NAMES
from kd_runner.runtime.rng import seed_everything

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_smoke_run_writes_result_and_metrics(smoke_run):
    cwd, proc = smoke_run
    run_dir = cwd / "run1"
    result, metrics = read_run(run_dir)

    assert result["status"] == "completed"
    assert result["teacher"]["source"] == "trained"
    assert set(METRIC_NAMES) | set(TOP5_NAMES) | {"best_student_acc"} == set(result["metrics"])  # digits: 10 classes
    for name in ("student_acc", "teacher_acc", "agreement"):
        assert 0.0 <= result["metrics"][name] <= 1.0
    # two tiny epochs on digits already learn far beyond chance (0.1)
    assert result["metrics"]["teacher_acc"] > 0.5 and result["metrics"]["student_acc"] > 0.5
    assert result["metrics"]["best_student_acc"] >= result["metrics"]["student_acc"]

    assert list(metrics["stage"]) == ["teacher", "teacher", "student", "student"]
    assert list(metrics["epoch"]) == [1, 2, 1, 2]
    student = metrics[metrics.stage == "student"]
    last = student.iloc[-1]
    for name in METRIC_NAMES:  # result.json holds the final epoch's values, not the best
        assert math.isclose(result["metrics"][name], last[name], rel_tol=1e-9)
    assert math.isclose(result["metrics"]["best_student_acc"], student["student_acc"].max())
    teacher_rows = metrics[metrics.stage == "teacher"]
    assert math.isclose(teacher_rows["teacher_acc"].iloc[-1], result["metrics"]["teacher_acc"], rel_tol=1e-9)
    assert (student["teacher_acc"] == result["metrics"]["teacher_acc"]).all()
    assert (metrics["lr"].iloc[[0, 2]] == 0.05).all()  # the configured lr at the first epoch of each stage

    models = result["models"]
    assert models["teacher"]["params"] > models["student"]["params"] > 0
    assert math.isclose(
        models["compression_ratio"], models["teacher"]["params"] / models["student"]["params"], rel_tol=1e-3
    )
    assert result["device"] == "cpu"
    assert len(result["config_digest"]) == 16
    assert set(result["versions"]) == {"python", "torch", "torchvision", "kd_runner"}
    assert (run_dir / "student.pt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "kd-run.log").is_file()
    assert "student_acc" in proc.stdout and "compression" in proc.stdout  # the end-of-run summary


def test_second_run_loads_the_cached_teacher_and_reproduces_the_metrics(smoke_run, smoke_cache, tmp_path):
    """The same command from another folder: the default cache is the user's, not the current directory's."""
    cwd, _ = smoke_run
    kd_run("experiment=smoke", f"hydra.run.dir={cwd / 'run2'}", cwd=tmp_path)
    first, _ = read_run(cwd / "run1")
    second, metrics = read_run(cwd / "run2")
    assert second["teacher"]["source"] == "cache"
    assert "loaded from cache" in (cwd / "run2" / "kd-run.log").read_text()
    assert "fine-tuning" in (cwd / "run1" / "kd-run.log").read_text()
    assert second["metrics"] == first["metrics"]
    assert (metrics.stage == "teacher").sum() == 2  # the cached teacher's history is kept


def test_a_different_seed_changes_the_student_but_not_the_teacher(smoke_run, smoke_cache):
    cwd, _ = smoke_run
    kd_run("experiment=smoke", "seed=1", "hydra.run.dir=run_seed1", cwd=cwd)
    first, _ = read_run(cwd / "run1")
    other, _ = read_run(cwd / "run_seed1")
    assert other["teacher"]["source"] == "cache"
    assert other["metrics"]["teacher_acc"] == first["metrics"]["teacher_acc"]
    assert other["metrics"]["objective"] != first["metrics"]["objective"]


def test_compose_api_run_is_deterministic(tmp_path):
    """Two runs with the same config and seed, each training its own teacher, give identical metrics,
    whatever state the process's random generators were left in."""
    records = []
    for state, name in enumerate(("a", "b")):
        seed_everything(1000 + state)
        cfg = compose_config(
            "experiment=smoke", f"cache_dir={tmp_path / name / 'cache'}", "alpha=0.3", "soft_loss=soft_ce"
        )
        records.append(run.run(cfg, tmp_path / name))
    assert records[0]["teacher"]["source"] == records[1]["teacher"]["source"] == "trained"
    assert records[0]["metrics"] == records[1]["metrics"]
    assert records[0]["config"]["alpha"] == 0.3 and records[0]["config"]["soft_loss"] == "soft_ce"


@pytest.mark.parametrize(
    "group,option,recipe",
    [
        ("teacher", "mlp", None),
        ("student", "cnn", None),
        ("dataset", "fake", None),
        ("teacher", "resnet50", "digits_deep_teacher"),
    ],
)
def test_config_groups_compose(group, option, recipe):
    """GROUP=OPTION gives that group the schema's defaults under its option file's keys (and those of the recipe
    its defaults line names); the rest of the config is the default."""
    cfg, default = compose_config(f"{group}={option}"), compose_config()
    written = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
    written.pop("defaults", None)
    if recipe is not None:
        written = {**yaml.safe_load((CONF / "recipe" / f"{recipe}.yaml").read_text()), **written}
    assert written["name"] == option
    composed = getattr(cfg, group)
    assert composed == dataclasses.replace(type(composed)(), **written)
    assert composed != getattr(default, group)
    assert cfg == dataclasses.replace(default, **{group: composed})


@pytest.mark.parametrize("group,option", [("teacher", "resnet20"), ("dataset", "synthetic")])
def test_registered_group_options_compose_to_the_schema_under_their_name(group, option):
    """An option without a file (registered from names.NETWORKS / names.DATASETS) is the schema's defaults
    with its name."""
    cfg, default = compose_config(f"{group}={option}"), compose_config()
    composed = getattr(cfg, group)
    assert composed == dataclasses.replace(type(composed)(), name=option)
    assert cfg == dataclasses.replace(default, **{group: composed})


def test_help_lists_groups_and_main_keys(tmp_path):
    out = kd_run("--help", cwd=tmp_path).stdout
    for text in (
        "teacher: ",
        "student: ",
        "dataset: ",
        "experiment: ",
        "alpha",
        "temperature",
        "soft_loss",
        "STAGE.optimizer",
        "STAGE.scheduler",
        "resnet50",
        "smoke",
    ):
        assert text in out
    assert not (tmp_path / "outputs").exists()


def test_the_embedded_default_learns_the_digits(tmp_path):
    """`kd-run` with no arguments (what `make run` does): the full default recipe on the real digits."""
    kd_run("hydra.run.dir=run", cwd=tmp_path)
    result, _ = read_run(tmp_path / "run")
    assert result["config"]["teacher"]["name"] == "cnn" and result["config"]["student"]["name"] == "mlp"
    assert result["config"]["dataset"]["name"] == "digits" and result["config"]["alpha"] == 0.5
    assert result["metrics"]["teacher_acc"] > 0.95 and result["metrics"]["student_acc"] > 0.9
    assert result["models"]["compression_ratio"] > 100
