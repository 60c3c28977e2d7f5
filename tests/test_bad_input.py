"""Every user mistake: one line naming the key, the bad value and what is allowed; exit 2; nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import compose_config, kd_run, usage_error_line

from kd_runner import run
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.config import DatasetConfig
from kd_runner.data import Dataset, Split, check_dataset
from kd_runner.errors import UserError
from kd_runner.models import build_model
from kd_runner.runtime.distributed import Shard
from kd_runner.train.engine import check_steps

CASES = [
    (["teacher=resnet5"], ["teacher='resnet5'", "resnet50"]),
    (["student=vgg"], ["student='vgg'", "mlp"]),
    (["dataset=imagenet21k"], ["dataset='imagenet21k'", "digits"]),
    (["student.name=foo"], ["student.name='foo'", "resnet18"]),
    (["alpha=1.5"], ["alpha=1.5", "[0, 1]"]),
    (["alpha=-0.1"], ["alpha=-0.1", "[0, 1]"]),
    (["alpha=abc"], ["alpha", "abc"]),
    (["temperature=0"], ["temperature=0.0", "[0.01, 100]"]),
    (["temperature=-2"], ["temperature=-2.0", "[0.01, 100]"]),
    (["soft_loss=l2"], ["soft_loss='l2'", "kl, soft_ce, mse"]),
    (["teacher.epochs=-1"], ["teacher.epochs=-1", ">= 0"]),
    (["student.epochs=two"], ["student.epochs", "two"]),
    (["student.batch_size=0"], ["student.batch_size=0", "> 0"]),
    (["teacher.batch_size=-8"], ["teacher.batch_size=-8", "> 0"]),
    (["student.lr=0"], ["student.lr=0.0", "float32 holds (<= 3.4e38)"]),
    (["teacher.lr=-0.1"], ["teacher.lr=-0.1", "float32 holds (<= 3.4e38)"]),
    (["teacher.lr=1e308"], ["teacher.lr=1e+308", "float32 holds (<= 3.4e38)"]),
    (["teacher.optimizer=rmsprop"], ["teacher.optimizer='rmsprop'", "sgd, adam, adamw"]),
    (["student.scheduler=linear"], ["student.scheduler='linear'", "none, step, cosine, onecycle"]),
    (["teacher.epochs=0"], ["teacher.epochs", "teacher.checkpoint"]),
    (["teacher.checkpoint=missing.pt"], ["teacher.checkpoint='missing.pt'", "no such file"]),
    (["device=tpu"], ["device='tpu'", "auto, cpu, cuda, mps"]),
    (["alpah=0.5"], ["alpah"]),
    (["dataset.val_fraction=1.0"], ["dataset.val_fraction=1.0", "(0, 1)"]),
    (["-m", "alpha=0,2"], ["alpha=2.0", "[0, 1]"]),
    (["dataset=synthetic", "dataset.num_classes=1"], ["dataset.num_classes=1", ">= 2"]),
    (["student.lr=fast"], ["student.lr", "fast"]),
    (["experiment=smoke", "teacher.batch_size=1"], ["teacher.batch_size=1", "at least 2 with 1 processes"]),
]
if not torch.cuda.is_available():
    CASES.append((["device=cuda"], ["device='cuda' is not available", "device=auto or device=cpu"]))


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_gives_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(args, capsys)
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even Hydra's run directory


def test_bad_input_through_the_console_script(tmp_path):
    proc = kd_run("alpha=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "kd-run: error: alpha=2.0 is not allowed: expected a number in [0, 1] (weight of the hard-label loss)"
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def teacher_state(**dims):
    """A state dict of the smoke teacher (cnn, width 16, depth 2, 8x8 grey digits), or of a variant."""
    shape = {"name": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8, "width": 16, "depth": 2, **dims}
    return build_model(shape.pop("name"), **shape).state_dict()


def write_checkpoints(folder: Path) -> None:
    torch.save(teacher_state(), folder / "good.pt")
    good = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    (folder / "notes.pt").write_text("these are not weights\n")
    torch.save(build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=16, depth=2), folder / "code.pt")
    torch.save(teacher_state(name="mlp", width=32, depth=1), folder / "mlp.pt")
    torch.save(teacher_state(num_classes=5), folder / "five.pt")
    torch.save(torch.zeros(3), folder / "tensor.pt")


# Mistakes that show once the run has started (a file's content, the dataset built): the same one line
# and exit code 2; the run directory holds only Hydra's files, the log and result.json saying "failed".
IN_RUN_CASES = [
    (
        ["teacher.checkpoint=truncated.pt"],
        ["teacher.checkpoint='truncated.pt'", "truncated, corrupted or not a PyTorch file"],
    ),
    (["teacher.checkpoint=notes.pt"], ["teacher.checkpoint='notes.pt'", "not a PyTorch file"]),
    (["teacher.checkpoint=code.pt"], ["teacher.checkpoint='code.pt'", "pickled code", "model.state_dict()"]),
    (["teacher.checkpoint=mlp.pt"], ["teacher.checkpoint='mlp.pt' does not match teacher cnn", "missing keys"]),
    (
        ["teacher.checkpoint=five.pt"],
        [
            "does not match teacher cnn (1 input channels, 10 classes)",
            "fc.weight is (5, 32) in the file, (10, 32) in the model",
        ],
    ),
    (["teacher.checkpoint=tensor.pt"], ["teacher.checkpoint='tensor.pt' holds a Tensor, not a state dict"]),
    (
        ["student.weights_path=five.pt", "student=cnn", "student.width=16", "student.depth=2"],
        ["weights_path='five.pt' is not a state dict of cnn", "num_classes=10"],
    ),
    (["dataset.val_fraction=0.001"], ["dataset.val_fraction=0.001", "[0.0056, 0.9944]"]),
    (
        ["dataset=synthetic", "dataset.num_samples=2", "dataset.val_fraction=0.5"],
        ["dataset synthetic: the training split holds a single class", "at least 2 classes"],
    ),
    (
        ["dataset=synthetic", "dataset.num_samples=4", "dataset.val_fraction=0.9"],
        ["dataset.val_fraction=0.9", "leaves training samples"],
    ),
    (
        ["transfer=digits", "transfer.dataset.split_seed=1"],
        ["transfer.dataset=digits: 292 of its 360 validation images are in the teacher's training split"],
    ),
]


@pytest.mark.parametrize("args,expected", IN_RUN_CASES, ids=[" ".join(a) for a, _ in IN_RUN_CASES])
def test_bad_input_found_in_the_run_gives_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_checkpoints(tmp_path)
    err = usage_error_line(["experiment=smoke", *args, "hydra.run.dir=run"], capsys)
    for text in expected:
        assert text in err
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "kd-run.log", "result.json"]
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "failed" and record["message"] == err.removeprefix("kd-run: error: ")
    assert not (tmp_path / "outputs").exists()  # the teacher cache untouched: not even created


def test_a_directory_of_another_config_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for run_dir in ("run", "sweep/1"):
        (tmp_path / run_dir).mkdir(parents=True)
        (tmp_path / run_dir / "result.json").write_text(
            json.dumps({"status": "completed", "config_digest": "0123456789abcdef"})
        )
    before = sorted(tmp_path.rglob("*"))
    for args in (["hydra.run.dir=run"], ["-m", "alpha=0,1", "hydra.sweep.dir=sweep"]):
        with pytest.raises(SystemExit) as exc:
            kd_run_main(["experiment=smoke", *args])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1
        assert "already holds a run of another config or of other code of yours (config digest 0123456789abcdef" in err
        assert "choose another hydra.run.dir / hydra.sweep.dir" in err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("key", ["hydra.run.dir", "cache_dir"])
def test_an_output_directory_under_a_file_is_refused(key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exc:
        kd_run_main([f"{key}=afile/out"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err == f"kd-run: error: {key}='afile/out' cannot be created: {tmp_path / 'afile'} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_output_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit) as exc:
        kd_run_main(["hydra.run.dir=ro/run"])
    assert exc.value.code == 2
    assert f"hydra.run.dir='ro/run' cannot be written: {tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_traceback_only_with_hydra_full_error(tmp_path, monkeypatch):
    """HYDRA_FULL_ERROR=1 lets the error through (with its traceback), in preflight and in the run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    write_checkpoints(tmp_path)
    with pytest.raises(UserError, match="alpha=2.0"):
        kd_run_main(["alpha=2"])
    with pytest.raises(UserError, match="truncated"):
        kd_run_main(["experiment=smoke", "teacher.checkpoint=truncated.pt", "hydra.run.dir=run"])


def test_an_error_inside_the_run_shows_no_traceback_through_the_console_script(tmp_path):
    write_checkpoints(tmp_path)
    proc = kd_run("experiment=smoke", "teacher.checkpoint=five.pt", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kd-run: error: teacher.checkpoint='five.pt' does not match teacher cnn")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("which", ["train", "val"])
def test_a_dataset_with_an_empty_split_is_refused(which):
    """Any builder's dataset passes the same checks (the built-in ones refuse such a split earlier)."""
    full = Split(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    empty = Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    data = Dataset("folder", empty if which == "train" else full, empty if which == "val" else full, 2, (0.5,), (0.2,))
    split = "training" if which == "train" else "validation"
    with pytest.raises(UserError, match=f"dataset folder: the {split} split has 0 samples"):
        check_dataset(data, DatasetConfig())


def test_a_damaged_result_json_in_the_run_directory_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text('{"status": "compl')
    with pytest.raises(SystemExit) as exc:
        kd_run_main(["hydra.run.dir=run"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err == (
        "kd-run: error: run/result.json is not valid JSON: delete it (the run then starts over) "
        "or use another directory"
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_a_batch_too_small_for_the_processes_is_refused_for_both_stages(stage, tmp_path):
    cfg = compose_config("experiment=smoke", f"{stage}.batch_size=3", f"cache_dir={tmp_path}")
    with pytest.raises(UserError, match=f"{stage}.batch_size=3 is not allowed: at least 4 with 2 processes"):
        run.check_job(cfg, None, dir_key="hydra.run.dir", processes=2)


@pytest.mark.parametrize(
    "n,batch_size,world,refused",
    [(3, 8, 2, True), (4, 8, 2, False), (1, 8, 1, True), (100, 1, 1, True), (2, 2, 1, False)],
)
def test_a_stage_without_a_single_optimizer_step_is_refused(n, batch_size, world, refused):
    cfg = compose_config("experiment=smoke", f"teacher.batch_size={batch_size}")
    if not refused:
        check_steps(n, cfg.teacher, Shard(0, world), "teacher")
        return
    with pytest.raises(UserError, match=f"teacher.batch_size={batch_size} is not allowed with {n} training samples"):
        check_steps(n, cfg.teacher, Shard(0, world), "teacher")
