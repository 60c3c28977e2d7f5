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


def aggregate_script() -> None:
    """The kd-aggregate console script: a signal is one line and code 75 from its first moment on (its tables
    and plots are written atomically: none is left half-written)."""
    from kd_runner.runtime.interrupt import exit_on_signal

    exit_on_signal("kd-aggregate", "run the same command again to write the tables")
    from kd_runner.cli.sweep_tools import aggregate_main

    aggregate_main()


def report_script() -> None:
    """The kd-report console script, answering a signal as kd-aggregate does."""
    from kd_runner.runtime.interrupt import exit_on_signal

    exit_on_signal("kd-report", "run the same command again to draw the plots")
    from kd_runner.cli.sweep_tools import report_main

    report_main()
