"""The teacher's logits for the student's batches (the soft targets) and for the validation split.

Without training augmentation the student sees the same inputs every epoch, so the teacher's logits on
the whole training split are computed once, kept on disk by kd_runner.teacher.logits_cache (every job of a sweep
that shares the teacher and the data reuses them) and indexed per batch. With augmentation every batch
is new: the teacher runs on exactly the student's augmented, normalised batch. Either way the teacher is
in eval mode under inference mode (and the data's precision) and never part of the student's graph, and
the same inputs give the same targets.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from kd_runner.data.splits import SplitData
from kd_runner.teacher import logits_cache
from kd_runner.train import engine


class SoftTargets:
    """`val_targets`: the teacher's validation logits the objective uses; `val`: those its metrics use, from
    `metrics_teacher` when given (an ensemble combined at T=1), else the same."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_key: str,
        data: SplitData,
        cache_dir: Path | str,
        metrics_teacher: nn.Module | None = None,
    ):
        self.teacher, self.data = teacher.eval(), data
        augmented = data.augmentation is not None
        splits = ("val",) if augmented else ("train", "val")
        logits, self.source = logits_cache.teacher_logits(teacher, teacher_key, data, splits, cache_dir)
        self.val_targets, self.train = logits["val"], logits.get("train")
        self.val = (
            self.val_targets if metrics_teacher is None else engine.predict(metrics_teacher, data, data.val.images)
        )

    def batch(self, idx: Tensor, inputs: Tensor) -> Tensor:
        """The teacher's logits for the training batch `idx`, whose normalised inputs the student saw."""
        if self.train is not None:
            return self.train[idx]
        with torch.inference_mode(), self.data.compute.autocast():
            logits = self.teacher(inputs).float()
        return logits.clone()  # cloned outside inference mode: an ordinary tensor the loss may save
