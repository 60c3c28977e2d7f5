"""kd-runner: a config-driven experiment runner for knowledge distillation."""

__version__ = "0.1.0"
