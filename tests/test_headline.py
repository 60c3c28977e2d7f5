"""The first command a user types tells the distillation story: a teacher clearly stronger than its student."""

from __future__ import annotations

import pytest
from helpers import kd_run, read_run


@pytest.mark.slow
def test_headline_teacher_is_clearly_stronger_than_the_undistilled_student(tmp_path):
    """`kd-run teacher=resnet50 student=resnet18 alpha=1` with the default recipes on digits: the teacher
    beats the student trained without distillation by at least 2 points (accuracy ordering, not time)."""
    kd_run("teacher=resnet50", "student=resnet18", "alpha=1", "hydra.run.dir=run", cwd=tmp_path, timeout=3600)
    result, _ = read_run(tmp_path / "run")
    metrics = result["metrics"]
    assert result["config"]["dataset"]["name"] == "digits"
    assert metrics["teacher_acc"] >= metrics["student_acc"] + 0.02, metrics
