"""Helpers the tests share: run the real `kd-run` console script, compose a config as kd-run does, read a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import hydra
import pandas as pd
import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from scipy import stats

from kd_runner.cli import compose
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.cli.sweeper import KdSweeper
from kd_runner.config import RunConfig, load_config

KD_RUN = str(Path(sys.executable).with_name("kd-run"))


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def kd_run(*args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([KD_RUN, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kd-run {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_kd_run(*args: str, cwd: Path) -> subprocess.Popen:
    """A `kd-run` running in the background, to be signalled or killed by a test."""
    return subprocess.Popen(
        [KD_RUN, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `path` exists; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"kd-run ended (exit {proc.returncode}) before {path} appeared\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def usage_error_line(args: list[str], capsys) -> str:
    """Run `kd-run ARGS` in-process, expecting a usage error: exit 2 and one `kd-run: error:` line, returned."""
    with pytest.raises(SystemExit) as exc:
        kd_run_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("kd-run: error: ")
    return err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(*overrides: str) -> RunConfig:
    """The typed config `kd-run OVERRIDES...` would run, composed through Hydra's compose API."""
    compose.register()
    with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
        raw = hydra.compose("config", overrides=list(overrides))
    return compose.bound(load_config(OmegaConf.to_container(raw, resolve=True)))


def group_options(group: str) -> list[str]:
    """What `GROUP=NAME` offers, as `kd-run --help` lists it: the files in conf/ and the registered nodes."""
    compose.register()
    with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def planned_jobs(*overrides: str) -> list[compose.Job]:
    """The jobs kd-run's sweeper composes and checks for `kd-run -m OVERRIDES...`, none of them run."""
    compose.register()
    with compose.hydra_session() as session, mock.patch.object(KdSweeper, "launch", lambda self, jobs: jobs):
        return session.multirun(compose.CONFIG_NAME, None, [*overrides, "hydra.mode=MULTIRUN"])


def read_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    return json.loads((run_dir / "result.json").read_text()), pd.read_csv(run_dir / "metrics.csv")


def scipy_statistics(results: list[dict]) -> dict:
    """Independently of kd_runner.sweep.stats: per (alpha, temperature), the Student-t 95% CI of the mean
    student_acc, and the gain over alpha=1 at the same temperature paired by seed with scipy's t-test."""
    accs = {}
    for r in results:
        if r["status"] == "completed":
            cfg = r["config"]
            accs.setdefault((cfg["alpha"], cfg["temperature"]), {})[cfg["seed"]] = r["metrics"]["student_acc"]
    out = {}
    for (alpha, temperature), by_seed in accs.items():
        values = list(by_seed.values())
        mean, sem = sum(values) / len(values), stats.sem(values)
        half = stats.t.ppf(0.975, len(values) - 1) * sem
        out[alpha, temperature] = {"ci": (mean - half, mean + half)}
        base = accs.get((1.0, temperature))
        if alpha != 1 and base:
            seeds = sorted(set(by_seed) & set(base))
            diffs = [by_seed[s] - base[s] for s in seeds]
            test = stats.ttest_rel([by_seed[s] for s in seeds], [base[s] for s in seeds])
            mean = sum(diffs) / len(diffs)
            half = stats.t.ppf(0.975, len(diffs) - 1) * stats.sem(diffs)
            out[alpha, temperature] |= {"gain": mean, "gain_ci": (mean - half, mean + half), "p": test.pvalue}
    return out


def kd_objective(student, teacher, labels, alpha: float, temperature: float, kind: str, validation: bool = False):
    """The student's objective as a kd run computes it (kd_runner.methods.objective with the kd method) on
    logits `student` against the teacher's `teacher`: on a training batch, or (`validation`) as a float on
    the validation split."""
    from types import SimpleNamespace

    from kd_runner import methods
    from kd_runner.methods.objective import MethodState, Objective

    method = methods.make(methods.params_type("kd")(), temperature, kind)
    targets = SimpleNamespace(batch=lambda idx, inputs: teacher, val_targets=teacher)
    loss = Objective(method, alpha, MethodState(method), targets, None, len(student))
    if validation:
        return loss.validation(None, None, student, labels)
    return loss(student, torch.arange(len(student)), labels, None)
