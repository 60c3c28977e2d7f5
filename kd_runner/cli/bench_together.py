"""kd-bench's together workload: the 8 jobs of a seed sweep (digits, cnn -> mlp) trained one after another
against all at once (`hydra.sweeper.together=8`, kd_runner.run.together), seconds per student.

Both sides run in kd-bench's process on the configs kd-run composes, sharing the dataset, the teacher and
its soft targets as kd-run's sweeper does (kd_runner.runtime.shared), made once by a warm-up job before
either side is timed; each job writes its own run directory on both sides.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from kd_runner import run
from kd_runner.cli import compose
from kd_runner.config import RunConfig, load_config
from kd_runner.run.together import run_together
from kd_runner.runtime.shared import Shared

STUDENTS = 8


def composed(overrides: list[str]) -> RunConfig:
    """The typed config `kd-run OVERRIDES...` runs."""
    compose.register()
    with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
        raw = hydra_compose(compose.CONFIG_NAME, overrides=overrides)
    return load_config(OmegaConf.to_container(raw, resolve=True))


def bench_together(device: torch.device, epochs: int, threads: int, workdir: Path) -> dict:
    """Seconds per student of 8 seeds' jobs, one after another and together, and their ratio; `threads`:
    the jobs' CPU threads (0: all cores)."""
    common = ["experiment=smoke", f"student.epochs={epochs}", f"cache_dir={workdir / 'together-cache'}"]
    common += [f"device={device.type}", "progress=false", f"threads={threads}"]
    cfgs = [composed([*common, f"seed={seed}"]) for seed in range(STUDENTS)]
    shared = Shared()
    run.run(cfgs[0], workdir / "together-warm", stop=lambda: None, shared=shared)  # data, teacher, logits: made
    start = time.perf_counter()
    for seed, cfg in enumerate(cfgs):
        run.run(cfg, workdir / "one-by-one" / str(seed), stop=lambda: None, shared=shared)
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    dirs = [workdir / "together" / str(seed) for seed in range(STUDENTS)]
    run_together(cfgs, dirs, [[]] * STUDENTS, shared, lambda: None)
    together = time.perf_counter() - start
    return {
        "students": STUDENTS,
        "epochs": epochs,
        "threads": cfgs[0].threads,
        "one_by_one_s_per_student": round(one_by_one / STUDENTS, 3),
        "together_s_per_student": round(together / STUDENTS, 3),
        "speedup": round(one_by_one / together, 3),
    }


def line(result: dict) -> str:
    threads = result["threads"] or "all"
    return (
        f"together      {result['students']} seeds, digits cnn -> mlp, {result['epochs']} student epochs, "
        f"threads {threads}: one after another {result['one_by_one_s_per_student']:.3f} s per student, together "
        f"{result['together_s_per_student']:.3f} s per student ({result['speedup']:.2f}x)"
    )
