"""teacher.checkpoint: a saved teacher is used as is (epochs=0) or fine-tuned further; a wrong one is one line."""

from __future__ import annotations

import torch
from helpers import compose_config, usage_error_line

from kd_runner import run
from kd_runner.data import build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.train import engine
from kd_runner.train.metrics import accuracy


def saved_teacher(tmp_path, **stage):
    cfg = compose_config("experiment=smoke")
    data = build_dataset(cfg.dataset)
    torch.manual_seed(123)
    model = build_stage_model(cfg.teacher, data)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    return model, data, path


def test_checkpoint_with_zero_epochs_is_used_as_is(tmp_path):
    model, data, path = saved_teacher(tmp_path)
    cfg = compose_config(
        "experiment=smoke", "teacher.epochs=0", f"teacher.checkpoint={path}", f"cache_dir={tmp_path / 'cache'}"
    )
    record = run.run(cfg, tmp_path / "run")
    assert record["teacher"]["source"] == "checkpoint"
    device_data = InMemoryData(data, Compute(torch.device("cpu")))
    expected = accuracy(engine.predict(model, device_data, device_data.val.images), device_data.val.labels)
    assert record["metrics"]["teacher_acc"] == expected
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing trained, no teacher cached


def test_checkpoint_with_epochs_is_fine_tuned_and_cached_under_its_own_key(tmp_path):
    _, _, path = saved_teacher(tmp_path)
    common = ["experiment=smoke", f"cache_dir={tmp_path / 'cache'}"]
    from_scratch = run.run(compose_config(*common), tmp_path / "a")
    from_ckpt = run.run(compose_config(*common, f"teacher.checkpoint={path}"), tmp_path / "b")
    assert from_scratch["teacher"]["source"] == from_ckpt["teacher"]["source"] == "trained"
    assert from_scratch["teacher"]["cache_key"] != from_ckpt["teacher"]["cache_key"]


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    monkeypatch.chdir(tmp_path)
    line = usage_error_line(
        ["experiment=smoke", "teacher.epochs=0", f"teacher.checkpoint={path}", "hydra.run.dir=run"], capsys
    )
    assert line.startswith("kd-run: error: teacher.checkpoint=")
    assert "does not match teacher cnn (1 input channels, 10 classes)" in line and "missing keys" in line
