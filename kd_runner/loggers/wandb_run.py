"""logger=wandb: one W&B run per kd-run run, offline by default (files under the run directory's wandb/,
`wandb sync` uploads them; logger.mode=online syncs as it runs); a sweep's jobs share a group and are named
by their swept overrides. Each stage's metrics have their own step axis (`<stage>/epoch`, by W&B's
define_metric), so the teacher's epochs and the student's do not share one x axis; the student's weights
are a model artifact with logger.log_model=true."""

from __future__ import annotations

from pathlib import Path

from kd_runner.loggers import RunInfo
from kd_runner.status import Status
from kd_runner.store.files import check_writable


def check(mode: str, run_dir: Path | str | None) -> None:
    """logger.strict: offline, the run directory must be writable; online, W&B must know an API key and
    answer with it. Raises W&B's own error when not."""
    if mode == "offline":
        if run_dir is not None:
            check_writable(Path(run_dir), "logger=wandb: the run directory")
        return
    import wandb

    wandb.Api(timeout=20).viewer  # noqa: B018 (asks the server who the key belongs to)


class WandbTracker:
    def __init__(self, mode: str, log_model: bool = False):
        self.mode, self.log_model = mode, log_model
        self.stages: set[str] = set()

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
        self.run_dir = info.run_dir

    def log_epoch(self, stage: str, row: dict) -> None:
        if stage not in self.stages:  # the stage's own x axis: its epoch
            self.run.define_metric(f"{stage}/epoch")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")
            self.stages.add(stage)
        self.run.log({f"{stage}/{key}": value for key, value in row.items() if isinstance(value, (int, float))})

    def finish(self, record: dict) -> None:
        import wandb

        self.run.summary.update(record.get("metrics", {}))
        weights = self.run_dir / "student.pt"
        if self.log_model and weights.is_file():
            artifact = wandb.Artifact(f"student-{self.run.id}", type="model")
            artifact.add_file(str(weights))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if record.get("status") == Status.COMPLETED else 1)
