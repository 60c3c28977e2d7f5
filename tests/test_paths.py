"""The `paths` group: where runs, sweeps and the cache go. The default cache is the user's, so the same
command from another folder loads the teacher already fine-tuned (tests/test_run_end_to_end.py runs it);
`cache_dir=` still overrides it for one call."""

from __future__ import annotations

from pathlib import Path

from helpers import compose_config, planned_jobs

from kd_runner.config import config_digest, result_key, user_cache_dir


def test_the_default_cache_is_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_RUNNER_CACHE", "~/kd")
    assert user_cache_dir() == str(Path.home() / "kd")
    monkeypatch.delenv("KD_RUNNER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == str(tmp_path / "xdg" / "kd-runner")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == str(tmp_path / "home" / ".cache" / "kd-runner")


def test_the_cache_does_not_depend_on_the_current_directory(monkeypatch, tmp_path, default_cache):
    configs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        configs.append(compose_config("experiment=smoke"))
    assert configs[0].cache_dir == configs[1].cache_dir == configs[0].paths.cache_dir == str(default_cache)


def test_cache_dir_overrides_paths_cache_dir_which_moves_it(tmp_path):
    assert compose_config(f"paths.cache_dir={tmp_path / 'p'}").cache_dir == str(tmp_path / "p")
    both = compose_config(f"paths.cache_dir={tmp_path / 'p'}", f"cache_dir={tmp_path / 'c'}")
    assert (both.cache_dir, both.paths.cache_dir) == (str(tmp_path / "c"), str(tmp_path / "p"))


def test_where_files_go_is_not_part_of_a_runs_identity(tmp_path):
    here = compose_config("experiment=smoke")
    there = compose_config("experiment=smoke", f"cache_dir={tmp_path}", f"paths.output_dir={tmp_path}")
    assert config_digest(here) == config_digest(there) and result_key(here) == result_key(there)


def test_paths_output_dir_holds_the_sweeps_and_the_mlflow_store(tmp_path):
    out = tmp_path / "elsewhere"
    jobs = planned_jobs("experiment=smoke", "alpha=0,1", f"paths.output_dir={out}", "logger=[csv,mlflow]")
    assert all(job.run_dir.is_relative_to(out / "sweeps") for job in jobs)
    assert jobs[0].cfg.logger.tracking_uri == f"{out}/mlflow"
    assert not out.exists()  # planned, not run
