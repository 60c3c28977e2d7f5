"""The CPU thread count: the environment's when `threads` is not set (OMP_NUM_THREADS, torchrun's and a
parallel launcher's share of the cores), recorded in result.json with where it came from, and part of the
cache keys, so that a result (and a cached teacher) always comes from one known thread count; a teacher
fine-tuned again for another count says so (docs/robustness.md)."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import compose_config, planned_jobs, usage_error_line

from kd_runner import run
from kd_runner.cli import compose
from kd_runner.runtime import process
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.process import cpu_cores

CPU = torch.device("cpu")


@pytest.fixture
def no_thread_env(monkeypatch):
    """Neither OMP_NUM_THREADS nor torchrun's LOCAL_WORLD_SIZE, whatever the test's shell sets."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return monkeypatch


def test_unset_threads_are_all_cores_and_enter_the_cpu_description(no_thread_env):
    assert (Compute.resolve(CPU).threads, Compute.resolve(CPU).threads_from) == (cpu_cores(), "all cores")
    assert Compute.resolve(CPU, threads=1).describe()["threads"] == 1
    assert Compute.resolve(CPU, threads=1).threads_from == "threads="
    assert Compute.resolve(CPU, threads=1).describe() != Compute.resolve(CPU, threads=2).describe()


def test_unset_threads_obey_omp_num_threads_and_an_explicit_count_wins(no_thread_env):
    no_thread_env.setenv("OMP_NUM_THREADS", "1")
    assert (Compute.resolve(CPU).threads, Compute.resolve(CPU).threads_from) == (1, "OMP_NUM_THREADS")
    no_thread_env.setenv("OMP_NUM_THREADS", "1,1")  # nested levels: the first is torch's
    assert Compute.resolve(CPU).threads == 1
    assert Compute.resolve(CPU, threads=2).threads == 2


def test_torchrun_processes_share_the_cores_of_their_machine(no_thread_env):
    no_thread_env.setattr(process, "cpu_cores", lambda: 2)
    no_thread_env.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node=2 on 2 cores
    assert process.environment_threads() == (1, "torchrun: 2 cores / 2 processes")
    no_thread_env.setenv("OMP_NUM_THREADS", "2")  # the user's own setting (torchrun keeps it)
    assert process.environment_threads() == (2, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["zero", "0", "100000"])
def test_a_bad_omp_num_threads_is_one_line(value, no_thread_env, capsys, tmp_path):
    no_thread_env.setenv("OMP_NUM_THREADS", value)
    err = usage_error_line(["experiment=smoke", f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path}/r"], capsys)
    assert f"OMP_NUM_THREADS={value!r} is not allowed: expected a whole number in [1, " in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "n_jobs,cores,threads", [(2, 16, 8), (-1, 16, 1), (-2, 16, 1), (None, 4, 4), (3, 2, 1), (4, 16, 4)]
)
def test_a_parallel_launcher_divides_the_cores_among_its_jobs(n_jobs, cores, threads):
    assert compose.parallel_threads(n_jobs, cores) == threads


def test_joblib_jobs_get_their_share_and_sequential_jobs_the_environments(tmp_path, no_thread_env):
    common = [f"cache_dir={tmp_path / 'cache'}", "experiment=smoke", "alpha=0,1"]
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/j"]
    joblib = planned_jobs(*common, *parallel)
    basic = planned_jobs(*common, f"hydra.sweep.dir={tmp_path}/b")
    assert [job.cfg.threads for job in joblib] == [max(1, cpu_cores() // 2)] * 2
    assert [job.cfg.threads for job in basic] == [0, 0]
    no_thread_env.setenv("OMP_NUM_THREADS", "1")  # the user's count: each job resolves it itself
    assert [job.cfg.threads for job in planned_jobs(*common, *parallel)] == [0, 0]
    assert not (tmp_path / "j").exists()


def test_same_config_seed_and_threads_give_identical_results_recorded_with_their_threads(
    tmp_path, no_thread_env, caplog
):
    records = []
    for name, cache, threads in (("a", "a", 1), ("b", "b", 1), ("c", "a", 2)):
        cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / cache / 'cache'}", f"threads={threads}")
        with caplog.at_level(logging.INFO, logger="kd_runner"):
            records.append(run.run(cfg, tmp_path / name))
        assert torch.get_num_threads() == threads
    one, again, two = records
    assert one["metrics"] == again["metrics"] and one["teacher"]["cache_key"] == again["teacher"]["cache_key"]
    assert (one["compute"]["threads"], two["compute"]["threads"]) == (1, 2)
    assert one["compute"]["threads_from"] == "threads="
    assert one["teacher"]["cache_key"] != two["teacher"]["cache_key"]  # never served to a run of another count
    assert two["teacher"]["source"] == "trained"  # and the log says why it was fine-tuned again
    assert f"nearest cached, cnn-{one['teacher']['cache_key']}, differs in: compute.threads: 1 -> 2" in caplog.text


def test_an_unset_thread_count_is_recorded_with_where_it_came_from(tmp_path, no_thread_env):
    no_thread_env.setenv("OMP_NUM_THREADS", "1")
    cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "student.epochs=1")
    record = run.run(cfg, tmp_path / "run")
    assert (record["compute"]["threads"], record["compute"]["threads_from"]) == (1, "OMP_NUM_THREADS")
    assert torch.get_num_threads() == 1
