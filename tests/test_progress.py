"""Live progress: the epoch lines (terminal or not), metrics.csv and result.json after every epoch, the best student."""

from __future__ import annotations

import json
import re

import pandas as pd
import torch
from helpers import compose_config, kd_run, read_run

from kd_runner import run
from kd_runner.errors import RunInterrupted
from kd_runner.train.progress import BatchBar, duration, epoch_line


def test_epoch_line_names_stage_epoch_lr_loss_main_metrics_time_and_eta():
    row = {"epoch": 3, "lr": 0.05, "train_loss": 0.51234, "student_acc": 0.9, "teacher_acc": 0.8, "logit_gap": 1.5}
    line = epoch_line("student", row, 10, 2.04, 125.0)
    assert line == (
        "student epoch 3/10: lr 0.05, train_loss 0.5123, student_acc 0.9000, teacher_acc 0.8000, "
        "logit_gap 1.5000, 2.0s, ETA 2m05s"
    )
    assert epoch_line("teacher", {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "teacher_acc": 0.5}, 2, 1, 1).endswith(
        "train_loss 2.0000, teacher_acc 0.5000, 1.0s, ETA 1s"
    )
    assert duration(7300) == "2h01m"


def test_every_epoch_is_logged_without_a_terminal_with_progress_off(smoke_run):
    cwd, proc = smoke_run  # not a terminal, and the smoke config sets progress=false
    log = (cwd / "run1" / "kd-run.log").read_text()
    for text in (proc.stdout + proc.stderr, log):
        for stage, epoch in (("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2)):
            assert f"{stage} epoch {epoch}/2: lr " in text
        assert "compute: device cpu, precision fp32," in text
    assert "\r" not in proc.stderr  # no bar


def test_best_student_is_kept_and_named_in_result(smoke_run):
    cwd, _ = smoke_run
    result, metrics = read_run(cwd / "run1")
    student = metrics[metrics.stage == "student"]
    best = student.loc[student["student_acc"].idxmax()]
    assert result["best"] == {
        "epoch": int(best["epoch"]),
        "student_acc": best["student_acc"],
        "weights": "student_best.pt",
    }
    state = torch.load(cwd / "run1" / "student_best.pt", weights_only=True)
    assert set(state) == set(torch.load(cwd / "run1" / "student.pt", weights_only=True))


def test_metrics_and_running_result_are_on_disk_after_every_epoch(tmp_path):
    """Stopped in the student's second epoch: every finished epoch was already written, status `running`."""
    cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / 'cache'}")
    run_dir, seen = tmp_path / "run", []

    def stop() -> str | None:  # like interrupt.requested: the signal's name once one came
        frame = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else None
        seen.append((json.loads((run_dir / "result.json").read_text()), frame))
        return "SIGTERM" if frame is not None and (frame.stage == "student").sum() == 1 else None

    try:
        run.run(cfg, run_dir, stop=stop)
    except RunInterrupted:
        pass
    record, frame = seen[-1]
    assert record["status"] == "running" and record["last_epoch"] == {"stage": "student", "epoch": 1}
    assert list(zip(frame.stage, frame.epoch)) == [("teacher", 1), ("teacher", 2), ("student", 1)]
    assert any(r.get("last_epoch") == {"stage": "teacher", "epoch": 1} for r, _ in seen)
    assert (run_dir / "student_best.pt").is_file()


def test_a_sweep_prints_one_line_per_job_and_keeps_the_details_in_each_jobs_log(tmp_path):
    args = ("-m", "experiment=smoke", "seed=0,1", "hydra.sweep.dir=sweep")
    proc = kd_run(*args, cwd=tmp_path)
    records = [json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text()) for i in (0, 1)]
    expected = [
        f"#{i} experiment=smoke seed={i}: completed, student_acc {r['metrics']['student_acc']:.4f}, "
        f"{r['timings_s']['total']:.1f}s"
        for i, r in enumerate(records)
    ]
    assert job_lines(proc.stdout) == expected
    for detail in ("epoch 1/2", "kd-run completed", "data: digits", "[HYDRA]"):
        assert detail not in proc.stdout + proc.stderr
    log = (tmp_path / "sweep" / "1" / "kd-run.log").read_text()
    assert "student epoch 2/2: " in log and "kd-run completed: cnn -> mlp" in log

    again = kd_run(*args, cwd=tmp_path)  # a re-run into the sweep says which jobs it skipped
    assert job_lines(again.stdout) == [
        line.replace(": completed", ": completed (skipped: finished before)") for line in expected
    ]


def job_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"#\d+ ", line)]


def test_without_bars_the_loss_is_never_read():
    """Reading a loss waits for the device: with `progress` off (or off a terminal) no batch pays for it."""

    class Unreadable:
        def __float__(self):
            raise AssertionError("the loss was read")

    bar = BatchBar("student", 1, 2, 100, show=False)
    bar.update(10, Unreadable())
    bar.close()
