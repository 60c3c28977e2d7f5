"""`python -m kd_runner.cli`: kd-run, whatever installed it (kd-bench runs it so: no script path needed)."""

from kd_runner.cli import kd_run_script

kd_run_script()
