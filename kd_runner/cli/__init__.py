"""kd-runner's command lines, the only package that imports Hydra: kd-run (kd_run.py, with compose.py,
sweeper.py and jobs.py), kd-eval (eval.py), kd-aggregate and kd-report (sweep_tools.py), kd-bench (bench.py).
"""


def kd_run_script() -> None:
    """The kd-run console script: a Ctrl-C or SIGTERM while Python is still loading kd-runner's modules
    exits with one line and code 75, as it does later, instead of a KeyboardInterrupt traceback."""
    from kd_runner.runtime.interrupt import exit_on_signal

    exit_on_signal("kd-run")
    from kd_runner.cli.kd_run import main

    main()
