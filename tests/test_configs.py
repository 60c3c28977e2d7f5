"""The config groups: teacher and student offer the same networks, every built-in network and dataset is an
option, every option composes to a valid config, the group files state only what differs from the schema,
and no network file repeats another."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import compose_config, group_options

from kd_runner.config import DatasetConfig, LoggerConfig, StageConfig, TeacherConfig
from kd_runner.names import DATASET_NAMES, MODEL_NAMES

CONF = Path(__file__).resolve().parents[1] / "conf"
SCHEMA_DEFAULTS = {
    "teacher": TeacherConfig(),
    "student": StageConfig(),
    "dataset": DatasetConfig(),
    "logger": LoggerConfig(),
}
# folders whose files may restate the schema's defaults, and why
WHOLE = {
    "experiment": "a preset states its published values",
    "recipe": "a recipe states all of its settings",
    "sweep": "Hydra's sweeper settings",
    "hparams_search": "Hydra's sweeper settings",
    "hydra": "Hydra's own settings",
    "method_student": "a student the method can train, stated whole over the one it replaces",
    "paths": "where files go (directories), no setting of a run",
}


def test_teacher_and_student_offer_the_same_networks():
    assert group_options("teacher") == group_options("student")


def test_every_network_and_dataset_is_an_option():
    assert group_options("teacher") == sorted([*MODEL_NAMES, "timm"])  # timm: any timm architecture by model.arch
    assert group_options("dataset") == group_options("transfer") == sorted(DATASET_NAMES)


@pytest.mark.parametrize("stage, name", [(s, n) for s in ("teacher", "student") for n in group_options(s)])
def test_network_option_composes_to_a_valid_config(stage, name):
    cfg = compose_config(f"{stage}={name}")
    assert getattr(cfg, stage).name == name


@pytest.mark.parametrize("name", group_options("dataset"))
def test_dataset_option_composes_as_dataset_and_as_transfer_set(name):
    cfg = compose_config(f"dataset={name}", f"transfer={name}")
    assert cfg.dataset == cfg.transfer.dataset and cfg.dataset.name == name


def test_every_group_folder_is_checked_or_states_its_values_whole():
    folders = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(SCHEMA_DEFAULTS) | set(WHOLE)


@pytest.mark.parametrize("group", sorted(SCHEMA_DEFAULTS))
def test_group_files_state_only_what_differs_from_the_schema(group):
    for path in sorted((CONF / group).glob("*.yaml")):
        settings = yaml.safe_load(path.read_text()) or {}
        settings.pop("defaults", None)  # another file it builds on: a recipe, or the teacher's network
        assert settings.get("name", path.stem) == path.stem, f"{group}/{path.name} must name its own {group}"
        default = SCHEMA_DEFAULTS[group]
        same = [key for key, value in settings.items() if key != "name" and value == getattr(default, key)]
        assert not same, f"{group}/{path.name} restates the schema's defaults of {same}"


def test_no_student_file_repeats_the_teachers():
    for path in sorted((CONF / "student").glob("*.yaml")):
        teacher = CONF / "teacher" / path.name
        same = teacher.is_file() and yaml.safe_load(teacher.read_text()) == yaml.safe_load(path.read_text())
        assert not same, (
            f"student/{path.name} repeats teacher/{path.name}: build on it (defaults: /teacher/NAME@_here_)"
        )
