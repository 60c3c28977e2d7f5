"""One knowledge-distillation run, as a library: `check_job(cfg, job_dir, ...)` refuses, before anything is
written, a job that cannot run here; `run(cfg, run_dir)` is the whole experiment (run.py, top to bottom).
Nothing here knows Hydra: the CLI composes the typed config and calls both.
"""

from kd_runner.run.check import check_job
from kd_runner.run.run import run

__all__ = ["check_job", "run"]
