"""Resume after a kill or a signal: the final metrics equal those of an uninterrupted run, exactly (CPU).

The subprocess tests kill or signal a real `kd-run` once its student checkpoint exists (at least one
student epoch done, several to go); the library tests stop a run after an exact number of batches, in
either stage and in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pandas as pd
import pytest
import torch
from helpers import compose_config, kd_run, read_run, start_kd_run, wait_for_file

from kd_runner import run
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.errors import RunInterrupted, UserError
from kd_runner.runtime import interrupt
from kd_runner.store import rundir
from kd_runner.store.files import directory_lock
from kd_runner.train.checkpoint import rng_states, set_rng_states

STUDENT_EPOCHS = 5
ARGS = ("experiment=smoke", f"student.epochs={STUDENT_EPOCHS}", "student.optimizer=adam", "student.scheduler=onecycle")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with one uninterrupted run `ref` (its teacher then cached for the other runs)."""
    cwd = tmp_path_factory.mktemp("resume")
    kd_run(*ARGS, "hydra.run.dir=ref", cwd=cwd)
    return cwd


def checkpoint_position(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["position"]


def temp_files(*folders) -> list:
    return [p for folder in folders for p in folder.rglob("*.tmp")]


def assert_same_run(run_dir, ref_dir):
    result, metrics = read_run(run_dir)
    ref_result, ref_metrics = read_run(ref_dir)
    assert result["status"] == "completed"
    assert result["metrics"] == ref_result["metrics"]
    pd.testing.assert_frame_equal(metrics, ref_metrics, check_exact=True)
    assert not rundir.student_checkpoint(run_dir).exists()  # a completed run drops its checkpoint


def test_sigkill_in_the_student_stage_then_the_same_command_resumes_exactly(workdir):
    proc = start_kd_run(*ARGS, "hydra.run.dir=killed", "checkpoint_every_s=0", cwd=workdir)
    checkpoint = rundir.student_checkpoint(workdir / "killed")
    wait_for_file(checkpoint, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((workdir / "killed" / "result.json").read_text())
    assert record["status"] == "running", "the run finished before the kill: make the student stage longer"
    epoch = checkpoint_position(checkpoint)["epoch"]
    assert 2 <= epoch <= STUDENT_EPOCHS  # at least one student epoch done, at least one to go

    kd_run(*ARGS, "hydra.run.dir=killed", "checkpoint_every_s=0", cwd=workdir)
    assert_same_run(workdir / "killed", workdir / "ref")
    log = (workdir / "killed" / "kd-run.log").read_text()
    assert f"student: resuming from {checkpoint} at epoch {epoch}" in log
    assert temp_files(workdir / "killed") == []


def test_sigterm_stops_at_a_safe_point_with_exit_75_and_resumes_exactly(workdir):
    proc = start_kd_run(*ARGS, "hydra.run.dir=term", "checkpoint_every_s=0", cwd=workdir)  # a file to wait for
    checkpoint = rundir.student_checkpoint(workdir / "term")
    wait_for_file(checkpoint, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 75
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("kd-run: interrupted by SIGTERM: stopped in the student stage at epoch ")
    assert "run the same command again to resume" in err and "Traceback" not in err
    record = json.loads((workdir / "term" / "result.json").read_text())
    assert record["status"] == "interrupted" and record["stage"] == "student" and record["signal"] == "SIGTERM"
    position = checkpoint_position(checkpoint)
    assert (position["epoch"], position["batches"]) == (record["epoch"], record["batches"])
    assert not (workdir / "term" / "student.pt").exists()
    metrics = pd.read_csv(workdir / "term" / "metrics.csv")  # every finished epoch, none of the stopped one
    assert list(metrics.stage) == ["teacher"] * 2 + ["student"] * (record["epoch"] - 1)
    assert temp_files(workdir / "term", workdir / "outputs") == []

    kd_run(*ARGS, "hydra.run.dir=term", cwd=workdir)
    assert_same_run(workdir / "term", workdir / "ref")


def stop_after(calls: int):
    """A stop request that turns true at its `calls`+1-th check (one check per batch, one at the start)."""
    count = [0]

    def stop() -> bool:
        count[0] += 1
        return count[0] > calls

    return stop


@pytest.fixture(scope="module")
def library_ref(tmp_path_factory):
    path = tmp_path_factory.mktemp("library")
    cfg = compose_config(*ARGS, f"cache_dir={path / 'cache'}")
    return cfg, run.run(cfg, path / "ref"), path


@pytest.mark.parametrize("checks,stage", [(30, "teacher"), (75, "student")])
def test_a_stop_in_the_middle_of_an_epoch_resumes_exactly(library_ref, tmp_path, checks, stage):
    """Both smoke stages have 23 batches per epoch: each case stops in the middle of the second epoch."""
    ref_cfg, ref, ref_dir = library_ref
    cfg = compose_config(*ARGS, f"cache_dir={tmp_path / 'cache'}")  # trains its own teacher
    with pytest.raises(RunInterrupted) as exc:
        run.run(cfg, tmp_path / "run", stop=stop_after(checks))
    assert exc.value.stage == stage and exc.value.batches > 0
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (record["status"], record["stage"], record["epoch"]) == ("interrupted", stage, exc.value.epoch)
    if stage == "teacher":  # its checkpoint lives in the cache, next to the entry it will become
        assert [p.suffix for p in (tmp_path / "cache" / "teachers").glob("*.ckpt")] == [".ckpt"]
        assert not list((tmp_path / "cache" / "teachers").glob("*.json"))

    resumed = run.run(cfg, tmp_path / "run")
    assert resumed["metrics"] == ref["metrics"]
    pd.testing.assert_frame_equal(read_run(tmp_path / "run")[1], read_run(ref_dir / "ref")[1], check_exact=True)
    assert not list((tmp_path / "cache" / "teachers").glob("*.ckpt"))  # dropped once the entry is published


def test_rerunning_a_completed_run_skips_it(library_ref, caplog):
    cfg, ref, path = library_ref
    before = (path / "ref" / "result.json").read_bytes()
    caplog.set_level("INFO")
    again = run.run(cfg, path / "ref")
    assert again == json.loads(before)
    assert (path / "ref" / "result.json").read_bytes() == before
    assert "skipped" in caplog.text and "completed" in caplog.text


def test_a_run_directory_of_another_config_is_refused_untouched(library_ref):
    cfg, _, path = library_ref
    before = {p.name: p.read_bytes() for p in (path / "ref").iterdir() if p.is_file()}
    other = compose_config(*ARGS, "alpha=0.9", f"cache_dir={path / 'cache'}")
    with pytest.raises(UserError, match="already holds a run of another config"):
        run.run(other, path / "ref")
    assert {p.name: p.read_bytes() for p in (path / "ref").iterdir() if p.is_file()} == before


def test_a_checkpoint_of_another_config_is_refused(library_ref, tmp_path):
    cfg, _, path = library_ref
    with pytest.raises(RunInterrupted):
        run.run(cfg, tmp_path / "run", stop=stop_after(5))  # teacher cached: stops in the student stage
    (tmp_path / "run" / "result.json").unlink()  # without its record, only the checkpoint's digest tells
    other = compose_config(*ARGS, "alpha=0.9", f"cache_dir={path / 'cache'}")
    with pytest.raises(UserError, match="checkpoint of another config"):
        run.run(other, tmp_path / "run")


def test_an_unreadable_checkpoint_is_reported_removed_and_the_stage_starts_over(library_ref, tmp_path, caplog):
    cfg, ref, _ = library_ref
    with pytest.raises(RunInterrupted):
        run.run(cfg, tmp_path / "run", stop=stop_after(40))
    checkpoint = rundir.student_checkpoint(tmp_path / "run")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # damaged on disk
    caplog.set_level("INFO")
    resumed = run.run(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "starts over" in warnings[0]
    assert resumed["metrics"] == ref["metrics"]  # starting over gives the same run


def test_a_run_directory_in_use_by_another_process_is_refused(library_ref, tmp_path):
    cfg, _, _ = library_ref
    (tmp_path / "run").mkdir()
    with directory_lock(tmp_path / "run"):  # as a kd-run writing there would hold it
        with pytest.raises(UserError, match="in use by another kd-run process"):
            run.run(cfg, tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


def test_the_first_signal_asks_for_a_stop_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.graceful_stop():
        assert interrupt.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handlers are back
    assert interrupt.requested() is None


def test_a_second_signal_exits_75_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def killed_again(cfg, run_dir, **kwargs):
        raise interrupt.StopNow("SIGINT")  # what the handler raises on a second signal

    monkeypatch.setattr(run, "run", killed_again)
    with pytest.raises(SystemExit) as exc:
        kd_run_main(["hydra.run.dir=run"])
    assert exc.value.code == 75
    assert capsys.readouterr().err.startswith("kd-run: stopped at once by a second signal; run the same command again")


def test_a_run_stopped_before_it_started_is_recorded_as_interrupted(tmp_path):
    """A signal that arrives while a sweep job is being set up: its result.json says interrupted, so the
    sweep's tables show it as such, and running it again starts it."""
    cfg = compose_config("experiment=smoke", "teacher.epochs=1", "student.epochs=1", f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(RunInterrupted, match="before it started"):
        run.run(cfg, tmp_path / "run", stop=lambda: "SIGINT")
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and record["stage"] is None and record["signal"] == "SIGINT"
    assert not (tmp_path / "cache").exists()  # nothing was computed
    assert run.run(cfg, tmp_path / "run")["status"] == "completed"


def test_checkpoints_are_written_by_time_and_always_on_a_stop(library_ref, tmp_path, monkeypatch):
    """With checkpoint_every_s, an epoch end saves only once that much time has passed since the last save
    (a long interval: none at all); a stop always saves, and the run resumes from it exactly."""
    from kd_runner.run import student
    from kd_runner.train import checkpoint as checkpoints

    cfg, ref, _ = library_ref
    saves, best_writes = [], []
    save = checkpoints.StageCheckpoint.save
    monkeypatch.setattr(
        checkpoints.StageCheckpoint, "save", lambda self, *a, **k: saves.append(1) or save(self, *a, **k)
    )
    save_torch = student.save_torch
    monkeypatch.setattr(
        student, "save_torch", lambda state, path: best_writes.append(path.name) or save_torch(state, path)
    )
    run.run(dataclasses.replace(cfg, checkpoint_every_s=3600.0), tmp_path / "long")
    assert saves == []  # no epoch end saved within the hour
    assert best_writes.count("student_best.pt") == 1  # the best student kept in memory, written at the end
    run.run(dataclasses.replace(cfg, checkpoint_every_s=0.0), tmp_path / "every")
    assert len(saves) == cfg.student.epochs  # one per student epoch (the teacher comes from the cache)
    saves.clear()
    with pytest.raises(RunInterrupted):
        run.run(dataclasses.replace(cfg, checkpoint_every_s=3600.0), tmp_path / "stopped", stop=stop_after(40))
    assert saves == [1]  # the stop's own save
    assert (
        run.run(dataclasses.replace(cfg, checkpoint_every_s=3600.0), tmp_path / "stopped")["metrics"]
        == (ref["metrics"])
    )
