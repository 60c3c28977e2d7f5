"""kd-bench: the three loops do what they claim, and the command reports consistent numbers (never asserting a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_runner.cli import bench
from kd_runner.config import StageConfig
from kd_runner.data import Split, build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.rng import seed_everything
from kd_runner.train.optim import make_optimizer

KD_BENCH = str(Path(sys.executable).with_name("kd-bench"))
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    (w,) = [w for w in bench.workloads(CPU, None) if w.name == "digits"]
    data = build_dataset(w.dataset)
    seed_everything(0)
    teacher = build_stage_model(w.teacher, data).eval()
    return w, data, teacher, lambda: build_stage_model(w.student, data)


def test_loop_b_backpropagates_into_the_teacher_and_loop_a_does_not(digits):
    w, data, teacher, make_student = digits
    few = Split(data.train.images[:200], data.train.labels[:200])
    loader = torch.utils.data.DataLoader(bench.TutorialDataset(few, data, False), batch_size=w.batch_size)
    for teacher_grad in (False, True):
        t, student = bench.copy.deepcopy(teacher), make_student()
        optimizer = make_optimizer(student.parameters(), StageConfig())
        seen = bench.tutorial_epoch(t, student, optimizer, loader, CPU, teacher_grad)
        assert seen == 200
        assert all((p.grad is not None) == teacher_grad for p in t.parameters())
        assert all(p.grad is not None for p in student.parameters())


def test_loops_train_on_the_same_images(digits, tmp_path):
    w, data, teacher, make_student = digits
    n = len(data.train)
    images_a, seconds_a = bench.run_tutorial(w, data, teacher, make_student, 1, CPU, False, workers=0)
    assert images_a == (n // w.batch_size) * w.batch_size and seconds_a > 0  # drop_last
    images_c, _ = bench.run_kd_runner(w, data, teacher, make_student, 1, Compute.resolve(CPU), tmp_path)
    assert images_c == n
    assert len(list(tmp_path.glob("teacher_logits/*-train.pt"))) == 1  # (c) took its teacher logits from the cache


def test_tutorial_dataset_is_per_sample_normalised_like_the_engine(digits):
    _, data, _, _ = digits
    x, y = bench.TutorialDataset(data.train, data, augment=False)[5]
    d = InMemoryData(data, Compute(CPU))
    assert y == int(data.train.labels[5])
    assert torch.allclose(x, d.normalize(d.train.images[5:6])[0], atol=1e-5)


def kd_bench(tmp_path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [KD_BENCH, *args, "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(out.read_text())


def test_kd_bench_command_reports_every_method_and_skips_gpu_only_work(tmp_path):
    stdout, results = kd_bench(tmp_path, "--workloads", "digits,resnet224", "--epochs", "1", "--sweep-epochs", "0")
    assert "resnet224" in stdout and "skipped: GPU only" in stdout
    assert results["sweep"] is None
    (row,) = results["workloads"]
    assert row["workload"] == "digits" and results["compute"]["precision"] == "fp32"
    for key in ("a_images_per_s", "a0_images_per_s", "b_images_per_s", "c_images_per_s", "c_warm_images_per_s"):
        assert row[key] > 0
    # the printed table shows the ratios of the rates it measured, as results.json records them
    assert f"c/a {row['c/a']:.2f}  c/a0 {row['c/a0']:.2f}  c/b {row['c/b']:.2f}" in stdout
    assert row["cold_c/a"] > 0 and f"cold first epoch c/a {row['cold_c/a']:.2f}" in stdout
    # MFU: c's model FLOP/s over the measured matmul peak (noise on a shared machine can push it past 1,
    # a wrong FLOP count by orders of magnitude cannot)
    assert row["mfu_c"] == pytest.approx(row["c_model_flop_per_s"] / row["peak_flop_per_s"])
    assert 0.001 < row["mfu_c"] < 3


def test_with_workers_0_loop_a_is_already_the_main_process_loop(tmp_path):
    _, results = kd_bench(tmp_path, "--workloads", "digits", "--epochs", "1", "--sweep-epochs", "0", "--workers", "0")
    (row,) = results["workloads"]
    assert results["workers_a_b"] == 0
    assert row["a0_images_per_s"] == row["a_images_per_s"] and row["c/a0"] == row["c/a"]


@pytest.mark.slow
def test_kd_bench_times_a_sweep(tmp_path):
    stdout, results = kd_bench(
        tmp_path, "--workloads", "digits", "--epochs", "1", "--sweep-workload", "digits", "--sweep-epochs", "1"
    )
    assert "sweep 3 alphas x 2 seeds" in stdout
    sweep = results["sweep"]
    assert sweep["kd_run_s"] > 0 and sweep["loop_a_s"] > 0
    assert f"{sweep['speedup']:.2f}" in stdout


def test_epoch_seconds_times_every_epoch_with_its_validation(digits):
    w, data, _, make_student = digits
    d = InMemoryData(data, Compute(CPU))
    recipe = StageConfig(name=w.student.name, epochs=2, batch_size=w.batch_size)
    seconds = bench.epoch_seconds(make_student(), d, recipe, bench.engine.cross_entropy_loss)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_kd_run_is_found_through_the_interpreter_however_it_was_installed(tmp_path):
    """kd-bench runs `python -m kd_runner.cli`: no console script beside the interpreter needed (pipx, --target)."""
    proc = subprocess.run([sys.executable, "-m", "kd_runner.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("kd-runner "), proc.stderr
    assert "-m" in bench.sweep_arguments(*_digits_workload(), 1, CPU, tmp_path)


def _digits_workload():
    return [w for w in bench.workloads(CPU, None) if w.name == "digits"]


@pytest.mark.slow
def test_kd_bench_cifar100_workload(tmp_path):
    stdout, results = kd_bench(
        tmp_path,
        "--workloads",
        "digits",
        "--epochs",
        "1",
        "--sweep-epochs",
        "0",
        "--cifar-epochs",
        "1",
        "--samples",
        "30",
    )
    cifar = results["cifar100"]
    assert cifar["train_images"] == 25 and len(cifar["teacher_epoch_s"]) == len(cifar["student_epoch_s"]) == 1
    assert "resnet32x4 -> resnet8x4" in stdout


def bench_usage_error(args: list[str], capsys) -> tuple[str, str]:
    """kd-bench ARGS in-process, expecting argparse's usage error: exit 2; its stdout and stderr."""
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_unknown_workload_is_a_usage_error(capsys):
    _, err = bench_usage_error(["--workloads", "imagenet"], capsys)
    assert "unknown workload(s) imagenet; known: digits, resnet32, resnet32-aug, resnet224" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--repeats", "0"], "--repeats=0 is not allowed: expected a whole number >= 1"),
        (["--workers", "-1"], "--workers=-1 is not allowed: expected a whole number >= 0"),
        (["--json", "afile/out.json"], "--json="),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "device='cuda' is not available on this machine")]),
)
def test_bad_arguments_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "afile").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    out, err = bench_usage_error(args, capsys)
    assert err.strip().splitlines()[-1].startswith("kd-bench: error: ") and message in err
    assert "kd-bench on" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for minutes")
def test_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.strip() == "gpu_check: no CUDA device here"
