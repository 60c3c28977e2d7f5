"""Training: the loop (engine), optimizers and schedules, the distillation losses, metrics and checkpoints."""
