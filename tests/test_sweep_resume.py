"""Re-running a sweep into the same hydra.sweep.dir skips finished jobs and resumes the interrupted one."""

from __future__ import annotations

import json
import signal

import pytest
from helpers import kd_run, start_kd_run, wait_for_file

from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.store import rundir

SWEEP = ("-m", "experiment=smoke", "student.epochs=4", "alpha=0,0.5,1", "hydra.sweep.dir=sweep", "checkpoint_every_s=0")


def statuses(sweep_dir, jobs=3) -> list:
    return [
        json.loads((sweep_dir / str(i) / "result.json").read_text())["status"]
        if (sweep_dir / str(i) / "result.json").exists()
        else None
        for i in range(jobs)
    ]


def test_a_sweep_interrupted_by_sigint_finishes_on_a_rerun(tmp_path):
    proc = start_kd_run(*SWEEP, cwd=tmp_path)
    wait_for_file(rundir.student_checkpoint(tmp_path / "sweep" / "1"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert err.startswith("kd-run: interrupted by SIGINT: stopped in the student stage")
    assert statuses(tmp_path / "sweep") == ["completed", "interrupted", None]  # the sweep stopped there
    finished = (tmp_path / "sweep" / "0" / "result.json").read_bytes()

    out = kd_run(*SWEEP, cwd=tmp_path).stdout
    assert statuses(tmp_path / "sweep") == ["completed"] * 3
    assert (tmp_path / "sweep" / "0" / "result.json").read_bytes() == finished  # skipped, not redone
    assert out.count("skipped") == 1
    assert "student: resuming from" in (tmp_path / "sweep" / "1" / "kd-run.log").read_text()
    assert [
        json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text())["config"]["alpha"] for i in range(3)
    ] == [0, 0.5, 1]


def test_a_finished_sweep_is_skipped_and_another_sweep_into_its_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = ["-m", "experiment=smoke", "alpha=0,1", "hydra.sweep.dir=sweep"]
    kd_run_main(sweep)  # exit code 0: main returns
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("result.json")}

    kd_run_main(sweep)
    assert capsys.readouterr().out.count("skipped") == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("result.json")} == before

    with pytest.raises(SystemExit) as exc:
        kd_run_main(["-m", "experiment=smoke", "alpha=0.5,1", "hydra.sweep.dir=sweep"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "sweep/0 already holds a run of another config" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("result.json")} == before
