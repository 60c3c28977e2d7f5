"""The teacher's logits for the student's batches (the soft targets) and for the validation split.

Without training augmentation the student sees the same inputs every epoch, so the teacher's logits on
the whole training split are computed once and indexed per batch. With augmentation every batch is new:
the teacher runs on exactly the student's augmented, normalised batch. Either way the teacher is in eval
mode under inference mode and never part of the student's graph, and the same inputs give the same
targets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kd_runner import engine


class SoftTargets:
    def __init__(self, teacher: nn.Module, data: engine.DeviceData):
        self.teacher = teacher.eval()
        self.val = engine.predict(teacher, data, data.val.images)
        augmented = data.augmentation is not None
        self.train = None if augmented else engine.predict(teacher, data, data.train.images)

    def batch(self, idx: Tensor, inputs: Tensor) -> Tensor:
        """The teacher's logits for the training batch `idx`, whose normalised inputs the student saw."""
        if self.train is not None:
            return self.train[idx]
        with torch.inference_mode():
            logits = self.teacher(inputs).float()
        return logits.clone()  # cloned outside inference mode: an ordinary tensor the loss may save
