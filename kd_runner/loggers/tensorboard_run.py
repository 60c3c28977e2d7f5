"""logger=tensorboard: event files in the run directory's tensorboard/ (a sweep directory is then one
TensorBoard directory with a subdirectory per job): scalars per stage and epoch, and in the HPARAMS view the
keys that tell runs apart (the main ones and a sweep's swept keys) with the final metrics."""

from __future__ import annotations

from kd_runner.loggers import RunInfo

LOGDIR = "tensorboard"


class TensorBoardTracker:
    def start(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(info.run_dir / LOGDIR))
        self.hparams = info.hparams
        if info.tags:
            self.writer.add_text("tags", ", ".join(info.tags))

    def log_epoch(self, stage: str, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{stage}/{key}", value, global_step=row["epoch"])
        self.writer.flush()

    def finish(self, record: dict) -> None:
        final = {f"final/{key}": value for key, value in record.get("metrics", {}).items()}
        self.writer.add_hparams(self.hparams, final, run_name=".")
        self.writer.close()
