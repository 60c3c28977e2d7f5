"""The config files: teacher/ and student/ offer the same networks, every network and dataset file composes to
a valid config and each states only what differs from the schema (besides the name it selects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from kd_runner.config import DatasetConfig, RunConfig, StageConfig, TeacherConfig, load_config
from kd_runner.models import MODEL_NAMES

CONF = Path(__file__).resolve().parents[1] / "conf"
SCHEMA_DEFAULTS = {"teacher": TeacherConfig(), "student": StageConfig(), "dataset": DatasetConfig()}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_run_config(*overrides: str) -> RunConfig:
    ConfigStore.instance().store(name="kd_schema", node=RunConfig)
    with initialize_config_module(config_module="kd_runner.conf", version_base="1.3"):
        raw = compose("config", overrides=list(overrides))
    return load_config(OmegaConf.to_container(raw, resolve=True))


def test_teacher_and_student_offer_the_same_networks():
    assert options("teacher") == options("student")


def test_every_model_has_a_network_file():
    assert options("teacher") == sorted([*MODEL_NAMES, "timm"])  # timm: any timm architecture by model.arch


@pytest.mark.parametrize("stage, name", [(s, n) for s in ("teacher", "student") for n in options(s)])
def test_network_file_composes_to_a_valid_config(stage, name):
    cfg = compose_run_config(f"{stage}={name}")
    assert getattr(cfg, stage).name == name


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_file_composes_as_dataset_and_as_transfer_set(name):
    cfg = compose_run_config(f"dataset={name}", f"transfer={name}")
    assert cfg.dataset == cfg.transfer.dataset and cfg.dataset.name == name


@pytest.mark.parametrize("group", sorted(SCHEMA_DEFAULTS))
def test_group_files_state_only_what_differs_from_the_schema(group):
    for name in options(group):
        settings = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
        settings.pop("defaults", None)  # another file it builds on: a recipe, or the teacher's network
        assert settings.get("name", name) == name, f"{group}/{name}.yaml must name its own {group}"
        default = SCHEMA_DEFAULTS[group]
        same = [key for key, value in settings.items() if key != "name" and value == getattr(default, key)]
        assert not same, f"{group}/{name}.yaml restates the schema's defaults of {same}"
