"""Signals at awkward moments, sent for real to kd-run processes: a signal while kd-run checks its jobs, a second
signal while it exits after the first, a run waiting for another process's teacher. Each ends with exit code 75
and one line, never by the signal itself (-2/-15) or with a KeyboardInterrupt traceback."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import KD_RUN, _env, start_kd_run, wait_for_file

from kd_runner.store import rundir

# kd-run's own main, the functions named in argv[1] (MODULE.FUNCTION of kd_runner.cli) wrapped so that the
# process sends itself the signal argv[2] as each is called: a real signal at a chosen moment
SCRIPT = """
import importlib, os, signal, sys

def signalled(path, sig):
    module_name, name = path.rsplit(".", 1)
    module = importlib.import_module("kd_runner.cli." + module_name)
    real = getattr(module, name)
    def wrapped(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, sig))
        return real(*args, **kwargs)
    setattr(module, name, wrapped)

for path in sys.argv[1].split(","):
    signalled(path, sys.argv[2])
from kd_runner.cli.kd_run import main
main(sys.argv[3:])
"""


def run_signalled(names: list[str], sig: str, cwd: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", SCRIPT, ",".join(names), sig, "experiment=smoke", "hydra.run.dir=run", "cache_dir=c"]
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_kd_run_checks_its_jobs_exits_75_with_one_line(sig, tmp_path):
    proc = run_signalled(["compose.checked_job"], sig, tmp_path)  # Ctrl-C in the first seconds
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.strip() == f"kd-run: stopped at once by {sig}; run the same command again to resume"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_second_signal_while_kd_run_exits_after_the_first_still_exits_75(sig, tmp_path):
    """The first signal is sent as the run starts (it stops at once, interrupted); the second while kd-run
    reports that, after its graceful handler is gone: it once killed the process (-2/-15)."""
    proc = run_signalled(["kd_run.run_single", "jobs.fail"], sig, tmp_path)
    assert proc.returncode == 75, proc.stderr
    assert "Traceback" not in proc.stderr and f"stopped at once by {sig}" in proc.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "interrupted"


def test_a_run_waiting_for_the_teacher_lock_stops_on_sigterm(smoke_run, tmp_path):
    """Another process holds the lock of the teacher this run needs (it may train it for hours)."""
    cwd, _ = smoke_run
    key = json.loads((cwd / "run1" / "result.json").read_text())["teacher"]["cache_key"]
    (lock,) = (cwd / "cache" / "teachers").glob(f"*{key}.lock")
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = start_kd_run(
            "experiment=smoke", f"hydra.run.dir={tmp_path / 'waiting'}", f"cache_dir={cwd / 'cache'}", cwd=cwd
        )
        log = tmp_path / "waiting" / "kd-run.log"
        wait_for_file(log, proc)
        while "compute:" not in log.read_text() and proc.poll() is None:  # logged just before the teacher stage
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)  # before: it waited for the lock, i.e. forever here
        finally:
            proc.kill()  # no-op when it has ended
    assert proc.returncode == 75, err
    assert err.strip().startswith("kd-run: interrupted by SIGTERM: stopped in the teacher stage")
    assert json.loads((tmp_path / "waiting" / "result.json").read_text())["status"] == "interrupted"


def test_one_ctrl_c_in_a_joblib_sweep_stops_every_job_at_a_safe_point(smoke_run, tmp_path):
    """Ctrl-C signals the whole process group, the launcher's workers too: each job stops at a safe point,
    and kd-run reports an interruption, not "stopped at once by a second signal"."""
    cwd, _ = smoke_run
    sweep = tmp_path / "sweep"
    args = [KD_RUN, "-m", "experiment=smoke", "seed=0,1", "student.epochs=200", "hydra/launcher=joblib"]
    args += ["hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "checkpoint_every_s=0"]  # a file to wait for
    proc = subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as a terminal gives it
    try:
        for job in ("0", "1"):
            wait_for_file(rundir.student_checkpoint(sweep / job), proc)  # both jobs are training
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert "second signal" not in err and "Traceback" not in err
    assert "kd-run: interrupted by SIGINT: stopped in the student stage" in err
    runs = pd.read_csv(sweep / "runs.csv")
    assert runs["status"].tolist() == ["interrupted", "interrupted"]


# Ctrl-C at the moment Python starts loading kd-run's CLI (its imports take a while on a slow machine)
DURING_IMPORT = """
import importlib.abc, os, signal, sys

class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "kd_runner.cli.kd_run":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, SignalOnImport())
from kd_runner.cli import kd_run_script

sys.argv = ["kd-run", "experiment=smoke", "hydra.run.dir=run"]
kd_run_script()
"""


def test_ctrl_c_while_kd_run_loads_its_modules_exits_75_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", DURING_IMPORT], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.strip() == "kd-run: stopped at once by SIGINT; run the same command again to resume"
    assert list(tmp_path.iterdir()) == []
