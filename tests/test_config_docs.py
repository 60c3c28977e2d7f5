"""The key documentation of `kd-run --help` and docs/configuration.md is what scripts/config_docs.py
generates from the schema and conf/, and it names every key of the schema and every group option."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
from helpers import group_options
from hydra import compose, initialize_config_module

from kd_runner.cli.compose import register
from kd_runner.config import DatasetConfig, RunConfig, StageConfig, TeacherConfig, TransferConfig, key_docs
from kd_runner.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "configuration.md"
SCHEMA_CLASSES = (
    RunConfig,
    StageConfig,
    TeacherConfig,
    DatasetConfig,
    TransferConfig,
    *(m.params_type for m in METHODS.values()),
)


def load_generator():
    spec = importlib.util.spec_from_file_location("config_docs", REPO / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def composed_help_template() -> str:
    """The help template Hydra uses for `kd-run --help`, as composed from conf/."""
    register()
    with initialize_config_module(config_module="kd_runner.conf", version_base="1.3"):
        return compose("config", return_hydra_config=True).hydra.help.template


def spellings(key: str) -> set[str]:
    """How a key may be written in the docs: itself, or STAGE.KEY for a key both stages have."""
    stage, _, rest = key.partition(".")
    return {key, f"STAGE.{rest}"} if stage in ("teacher", "student") else {key}


@pytest.mark.parametrize("cls", SCHEMA_CLASSES, ids=lambda c: c.__name__)
def test_every_schema_field_has_a_one_line_doc(cls):
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert doc.strip() and "\n" not in doc, f"{cls.__name__}.{f.name} needs a one-line metadata doc"


def test_key_docs_walks_the_nested_schema():
    keys = [key for key, _, _ in key_docs()]
    assert len(keys) == len(set(keys))
    assert {
        "alpha",
        "teacher.lr",
        "teacher.ensemble",
        "student.milestones",
        "dataset.root",
        "transfer.dataset",
        "transfer.exclude_classes",
    } <= set(keys)
    assert not {"teacher", "student", "dataset", "transfer", "student.ensemble"} & set(keys)
    defaults = {key: default for key, default, _ in key_docs()}
    assert (defaults["alpha"], defaults["student.milestones"], defaults["transfer.dataset"]) == (0.5, [], None)


def test_committed_help_and_docs_are_what_the_generator_writes():
    generator = load_generator()
    for path in (generator.HELP, generator.DOCS):
        text = path.read_text()
        assert generator.render(path, text) == text, f"{path} is out of date: run python scripts/config_docs.py"


def test_every_schema_key_is_in_the_help_and_the_docs():
    template, docs = composed_help_template(), DOCS.read_text()
    for key, _, _ in key_docs():
        in_help = any(re.search(rf"^\s+{re.escape(s)}=", template, re.M) for s in spellings(key))
        in_docs = any(f"| `{s}` |" in docs for s in spellings(key))
        assert in_help and in_docs, f"{key}: in the help {in_help}, in docs/configuration.md {in_docs}"


def test_every_group_option_is_in_the_docs():
    docs = DOCS.read_text()
    groups = [p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")]
    for group in {*groups, "transfer"}:  # transfer: registered nodes only (kd_runner.cli.groups)
        assert f"`{group}=NAME`" in docs or f"`+{group}@" in docs, group
        for option in group_options(group):
            assert f"| `{option}` |" in docs, f"{group}={option} is missing from {DOCS.name}"
