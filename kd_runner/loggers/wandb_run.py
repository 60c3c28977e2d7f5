"""logger=wandb: one W&B run per kd-run run, offline by default (files under the run directory's wandb/,
`wandb sync` uploads them; logger.mode=online syncs as it runs); a sweep's jobs share a group."""

from __future__ import annotations

from kd_runner.loggers import RunInfo
from kd_runner.status import Status


class WandbTracker:
    def __init__(self, mode: str):
        self.mode = mode

    def start(self, info: RunInfo) -> None:
        import wandb

        self.run = wandb.init(
            mode=self.mode,
            dir=str(info.run_dir),
            project=info.project,
            group=info.group,
            name=info.name,
            config=info.params,
            tags=info.tags,
            settings=wandb.Settings(console="off", silent=True),
            reinit="create_new",
        )

    def log_epoch(self, stage: str, row: dict) -> None:
        self.run.log({f"{stage}/{key}": value for key, value in row.items() if isinstance(value, (int, float))})

    def finish(self, record: dict) -> None:
        self.run.summary.update(record.get("metrics", {}))
        self.run.finish(exit_code=0 if record.get("status") == Status.COMPLETED else 1)
