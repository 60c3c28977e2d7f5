"""What a training stage shows while it runs: a per-batch bar on a terminal and one log line per epoch.

The epoch line is logged (console and kd-run.log) whether or not there is a terminal, so a run under
SLURM, nohup or CI can be followed; the bar is tqdm's, shown only on a terminal and only when the
`progress` setting is on.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

EPOCH_METRICS = ("student_acc", "teacher_acc", "logit_gap")  # the ones the epoch line shows, when present
LOSS_REFRESH_S = 0.5  # how often the bar reads the loss (reading it waits for the device)


class BatchBar:
    """A tqdm bar over one epoch's training images (images/s) with the latest batch loss; it leaves no
    line behind, the epoch line takes its place."""

    def __init__(self, stage: str, epoch: int, epochs: int, images: int, show: bool):
        self.bar = tqdm(
            total=images,
            desc=f"{stage} {epoch}/{epochs}",
            unit="img",
            unit_scale=True,
            disable=None if show else True,  # None: only on a terminal
            leave=False,
        )
        self.loss_read = 0.0

    def update(self, images: int, loss) -> None:
        if self.bar.disable:
            return
        self.bar.update(images)
        now = time.monotonic()
        if now - self.loss_read >= LOSS_REFRESH_S:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            self.loss_read = now

    def close(self) -> None:
        self.bar.close()


class EpochLog:
    """Times a stage's epochs and logs one line per epoch with the time it took and the stage's ETA."""

    def __init__(self, stage: str, epochs: int):
        self.stage, self.epochs = stage, epochs
        self.seconds: list[float] = []
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()

    def done(self, row: dict) -> None:
        self.seconds.append(time.perf_counter() - self.started)
        eta = sum(self.seconds) / len(self.seconds) * (self.epochs - row["epoch"])
        log.info(epoch_line(self.stage, row, self.epochs, self.seconds[-1], eta))


def epoch_line(stage: str, row: dict, epochs: int, seconds: float, eta: float) -> str:
    """`stage epoch e/E: lr ..., train_loss ..., <main metrics>, <time>, ETA <time>`."""
    parts = [f"lr {row['lr']:.4g}", f"train_loss {row['train_loss']:.4f}"]
    parts += [f"{name} {row[name]:.4f}" for name in EPOCH_METRICS if row.get(name) is not None]
    parts += [f"{seconds:.1f}s", f"ETA {duration(eta)}"]
    return f"{stage} epoch {row['epoch']}/{epochs}: " + ", ".join(parts)


def duration(seconds: float) -> str:
    """A duration as 42s, 3m05s or 2h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
