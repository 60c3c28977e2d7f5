"""The `kd-run` console script's first step: a Ctrl-C or SIGTERM while Python is still loading kd-runner's
modules exits with one line and code 75, as it does later, instead of a KeyboardInterrupt traceback."""

from kd_runner.runtime.interrupt import exit_on_signal


def kd_run() -> None:
    exit_on_signal("kd-run")
    from kd_runner.cli import main

    main()
