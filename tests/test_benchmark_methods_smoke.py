"""`kd-run experiment=smoke distill=X` runs for every method of the CIFAR-100 KD tables (CRD's and DKD's):
a method that reads feature maps gets the smoke config's small conv student (conf/method_student/smoke/mlp/),
as the config the command composes; one run each, the teacher trained once."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_config

from kd_runner import run
from kd_runner.errors import UserError
from kd_runner.methods import METHODS
from kd_runner.methods.features import paired_stages
from kd_runner.models import build_model

TABLES = ("kd", "dkd", "dist", "fitnet", "at", "rkd", "sp", "pkt", "nst", "cc", "vid", "ofd", "crd", "reviewkd")
TABLES += ("kdsvd", "ab", "ft", "fsp")
SLOWEST = ("ab", "ft", "crd", "reviewkd")  # the slowest on a loaded 2-core CPU (ab, ft: a 30-epoch init stage)


def test_the_tables_are_every_built_in_method():
    assert set(TABLES) == set(METHODS) - {"custom"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the smoke teacher trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOWEST else m for m in TABLES])
def test_every_method_of_the_tables_runs_on_the_smoke_config(method, cache, tmp_path):
    cfg = compose_config("experiment=smoke", f"distill={method}", f"cache_dir={cache}")
    run.check_job(cfg, tmp_path / "run", dir_key="hydra.run.dir")
    record = run.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["config"]["distill"]["method"] == method
    assert all(math.isfinite(value) for value in record["metrics"].values())


@pytest.mark.parametrize(
    ("args", "student"),
    [
        (["distill=kd"], ("mlp", 32, 1)),  # smoke's own student for a method of logits or embeddings
        (["distill=at"], ("cnn", 8, 2)),  # a method of feature maps: the small conv net
        (["distill=fsp"], ("cnn", 16, 2)),  # equal widths: the teacher's
        (["distill=at", "student=mlp"], ("mlp", 32, 1)),  # a student named on the command line stays
        (["distill=at", "student.width=4"], ("cnn", 4, 2)),  # a key given on the command line wins
    ],
)
def test_the_smoke_student_follows_the_method_unless_one_is_named(args, student):
    cfg = compose_config("experiment=smoke", *args)
    assert (cfg.student.name, cfg.student.width, cfg.student.depth) == student


@pytest.mark.parametrize(
    ("student", "teacher", "size", "layers"),
    [
        (("cnn", 16, 2), ("cnn", 16, 2), 8, (["features.2", "features"], ["features.2", "features"])),
        (("cnn", 64, 2), ("cnn", 64, 3), 8, (["features.2", "features"], ["features.2", "features.6"])),
        (("resnet8x4", 0, 0), ("resnet32x4", 0, 0), 32, (["layer1", "layer2", "layer3"],) * 2),
    ],
)
def test_kdsvd_and_fsp_default_to_both_models_stages_paired_by_size(student, teacher, size, layers):
    """The last module to finish at each spatial size, inside the top-level blocks too; RepDistiller's
    pairs for resnet32x4 -> resnet8x4."""
    nets = [
        build_model(name, in_channels=3, num_classes=10, image_size=size, width=w or 64, depth=d or 2)
        for name, w, d in (student, teacher)
    ]
    assert paired_stages(*nets, torch.randn(2, 3, size, size), "kdsvd") == layers


def test_stages_of_other_widths_are_one_line_naming_both_models_stages():
    nets = [build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=w, depth=2) for w in (8, 16)]
    with pytest.raises(UserError) as exc:
        paired_stages(*nets, torch.randn(2, 1, 8, 8), "fsp")
    assert str(exc.value) == (
        "distill.student_layers: distill=fsp compares two or more maps of equal widths in both models; their "
        "stages (C x H x W) are student features.2 8x8x8, features 16x4x4, teacher features.2 16x8x8, features "
        "32x4x4, paired by size: name layers of equal widths (distill.student_layers, distill.teacher_layers), "
        "or give the student the teacher's widths"
    )
