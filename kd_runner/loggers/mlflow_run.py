"""logger=mlflow: one MLflow run per kd-run run: the config as params, per-epoch metrics (`<stage>/<metric>`,
step = epoch), the final metrics, and result.json, metrics.csv and any plots as artifacts (the student's
weights too with logger.log_model=true). A sweep's jobs are one experiment (<project>/<group>), each run
named by its swept overrides, and the sweep's end adds their parent run holding summary.csv, runs.csv,
summary.md and the sweep's plots (`log_sweep`). A local store by default; logger.tracking_uri names a server."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from kd_runner.loggers import RunInfo, experiment_name
from kd_runner.status import Status
from kd_runner.store.files import check_writable, file_lock

BATCH = 100  # an MLflow server takes at most 100 params per request
PLOTS = ("*.png", "*.svg", "*.pdf")
END_STATUS = {Status.COMPLETED: "FINISHED", Status.INTERRUPTED: "KILLED"}  # any other: FAILED
RUN_DIR, SWEEP_DIR = "kd_runner.run_dir", "kd_runner.sweep_dir"  # tags: a job's run, a sweep's parent run
PARENT = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent


def store_uri(tracking_uri: str) -> tuple[str, str | None]:
    """A URI (`http://...`, `sqlite:///...`) as it is; a local directory becomes a SQLite store in it, with the
    artifacts beside it. Returns the tracking URI and the artifact location of new experiments (None: the
    server's)."""
    if "://" in tracking_uri:
        return tracking_uri, None
    root = Path(tracking_uri).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _store_lock(tracking_uri: str):
    """A lock on a local store's folder while a client opens it: parallel jobs of a sweep (joblib) would
    otherwise race on the SQLite schema's creation and leave the store broken for every later run. A
    server serialises its clients itself."""
    if "://" in tracking_uri:
        return contextlib.nullcontext()
    return file_lock(Path(tracking_uri).resolve() / "mlflow.db.lock")


def _open(tracking_uri: str, experiment: str):
    """A client of the store or server and the id of `experiment` in it (created when new)."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone: fail in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri, artifacts = store_uri(tracking_uri)
    with _store_lock(tracking_uri):  # a new local store migrates its schema: one process at a time
        client = MlflowClient(tracking_uri=uri)
        return client, _experiment_id(client, experiment, artifacts)


def _experiment_id(client, name: str, artifacts: str | None) -> str:
    """The experiment's id, created when new (by this job or, at the same time, by another of the sweep)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def check(tracking_uri: str, experiment: str) -> None:
    """logger.strict: a local store's folder must be writable; a server must answer and hold (or create)
    the experiment. Raises the client's own error when not."""
    if "://" not in tracking_uri:
        check_writable(tracking_uri, "logger.tracking_uri")
        return
    _open(tracking_uri, experiment)


class MlflowTracker:
    def __init__(self, tracking_uri: str, log_model: bool = False):
        self.tracking_uri, self.log_model = tracking_uri, log_model

    def start(self, info: RunInfo) -> None:
        from mlflow.entities import Param

        self.client, experiment_id = _open(self.tracking_uri, experiment_name(info.project, info.group))
        tags = {RUN_DIR: str(info.run_dir), **({"kd_runner.sweep": info.group} if info.group else {})}
        tags |= {"kd_runner.tags": ",".join(info.tags)} if info.tags else {}
        run = self.client.create_run(experiment_id, run_name=info.name, tags=tags)
        self.run_id, self.run_dir = run.info.run_id, info.run_dir
        params = [Param(key, str(value)) for key, value in info.params.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def log_epoch(self, stage: str, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{stage}/{key}", float(value), now, row["epoch"])
            for key, value in row.items()
            if key != "epoch" and isinstance(value, (int, float))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [Metric(key, float(value), now, 0) for key, value in record.get("metrics", {}).items()]
        self.client.log_batch(self.run_id, metrics=final)
        files = [self.run_dir / "result.json", self.run_dir / "metrics.csv"]
        files += [path for pattern in PLOTS for path in sorted(self.run_dir.glob(pattern))]
        files += [self.run_dir / "student.pt"] if self.log_model else []
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, END_STATUS.get(record.get("status"), "FAILED"))


def log_sweep(tracking_uri: str, experiment: str, sweep_dir: Path, files: list[Path], name: str, status: str) -> None:
    """The sweep's parent run in `experiment` (found again when the sweep is resumed), ended with `status`:
    `files` as its artifacts, and each job's run of the sweep (by its run directory) nested under it."""
    client, experiment_id = _open(tracking_uri, experiment)
    runs = client.search_runs([experiment_id], max_results=50000)
    parents = [r for r in runs if r.data.tags.get(SWEEP_DIR) == str(sweep_dir)]
    if parents:
        parent_id = parents[0].info.run_id
    else:
        parent_id = client.create_run(experiment_id, run_name=name, tags={SWEEP_DIR: str(sweep_dir)}).info.run_id
    for path in files:
        client.log_artifact(parent_id, str(path))
    for run in runs:  # a job's run directory, or a search trial's seed_<s> in it
        job_dir = Path(run.data.tags.get(RUN_DIR, "/"))
        if job_dir != sweep_dir and job_dir.is_relative_to(sweep_dir):
            client.set_tag(run.info.run_id, PARENT, parent_id)
    client.set_terminated(parent_id, status)
