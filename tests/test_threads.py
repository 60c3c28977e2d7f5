"""The CPU thread count: set per job, recorded in result.json and part of the cache keys, so that a
result (and a cached teacher) always comes from one known thread count (docs/robustness.md)."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, planned_jobs

from kd_runner import run
from kd_runner.cli import compose
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.process import cpu_cores

CPU = torch.device("cpu")


def test_threads_resolve_to_all_cores_and_enter_the_cpu_description():
    assert Compute.resolve(CPU).threads == cpu_cores()
    assert Compute.resolve(CPU, threads=1).describe()["threads"] == 1
    assert Compute.resolve(CPU, threads=1).describe() != Compute.resolve(CPU, threads=2).describe()


@pytest.mark.parametrize(
    "n_jobs,cores,threads", [(2, 16, 8), (-1, 16, 1), (-2, 16, 1), (None, 4, 4), (3, 2, 1), (4, 16, 4)]
)
def test_a_parallel_launcher_divides_the_cores_among_its_jobs(n_jobs, cores, threads):
    assert compose.parallel_threads(n_jobs, cores) == threads


def test_joblib_jobs_get_their_share_and_sequential_jobs_all_cores(tmp_path):
    common = [f"cache_dir={tmp_path / 'cache'}", "experiment=smoke", "alpha=0,1"]
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/j"]
    joblib = planned_jobs(*common, *parallel)
    basic = planned_jobs(*common, f"hydra.sweep.dir={tmp_path}/b")
    assert [job.cfg.threads for job in joblib] == [max(1, cpu_cores() // 2)] * 2
    assert [job.cfg.threads for job in basic] == [0, 0]
    assert not (tmp_path / "j").exists()


def test_same_config_seed_and_threads_give_identical_results_recorded_with_their_threads(tmp_path):
    records = []
    for name, threads in (("a", 1), ("b", 1), ("c", 2)):
        cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / name / 'cache'}", f"threads={threads}")
        records.append(run.run(cfg, tmp_path / name))
        assert torch.get_num_threads() == threads
    one, again, two = records
    assert one["metrics"] == again["metrics"] and one["teacher"]["cache_key"] == again["teacher"]["cache_key"]
    assert (one["compute"]["threads"], two["compute"]["threads"]) == (1, 2)
    assert one["teacher"]["cache_key"] != two["teacher"]["cache_key"]  # never served to a run of another count
