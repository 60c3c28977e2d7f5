"""kd-runner: a config-driven experiment runner for knowledge distillation."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`kd_runner.load_student` (kd_runner.evaluate), imported on first use so that `import kd_runner` stays light."""
    if name == "load_student":
        from kd_runner.evaluate import load_student

        return load_student
    raise AttributeError(f"module 'kd_runner' has no attribute {name!r}")
