"""Checks every built dataset passes before a run uses it, whatever builder made it.

A run needs samples to learn from, samples to measure on, and at least two classes to tell apart; a
dataset without them is a user error reported in one line, not a crash or a silent NaN later.
"""

from __future__ import annotations

from kd_runner.errors import UserError


def check_dataset(data, cfg) -> None:
    """Raise UserError when `data` (a Dataset built from `cfg`, its DatasetConfig) cannot make a run."""
    for split_name, split in (("training", data.train), ("validation", data.val)):
        if len(split) == 0:
            raise UserError(
                f"dataset {data.name}: the {split_name} split has 0 samples (dataset.val_fraction={cfg.val_fraction}): "
                "each split needs at least one sample"
            )
    present = int(data.train.labels.unique().numel())
    if data.num_classes < 2 or present < 2:
        raise UserError(
            f"dataset {data.name}: the training split holds a single class (training samples: {len(data.train)}, "
            f"classes declared: {data.num_classes}): classification needs at least 2 classes"
        )
