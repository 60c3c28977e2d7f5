"""logger=mlflow: one MLflow run per kd-run run (a sweep's jobs in one experiment per sweep): the config as
params, per-epoch metrics (`<stage>/<metric>`, step = epoch), the final metrics, and result.json, metrics.csv
and any plots as artifacts. A local store by default; logger.tracking_uri names a server."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from kd_runner.loggers import RunInfo
from kd_runner.status import Status
from kd_runner.store.files import file_lock

BATCH = 100  # an MLflow server takes at most 100 params per request
PLOTS = ("*.png", "*.svg", "*.pdf")
END_STATUS = {Status.COMPLETED: "FINISHED", Status.INTERRUPTED: "KILLED"}  # any other: FAILED


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


class MlflowTracker:
    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri

    def start(self, info: RunInfo) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone: fail in seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        uri, artifacts = store_uri(self.tracking_uri)
        experiment = info.project if info.group is None else f"{info.project}/{info.group}"
        with _store_lock(self.tracking_uri):  # a new local store migrates its schema: one process at a time
            self.client = MlflowClient(tracking_uri=uri)
            experiment_id = self._experiment_id(experiment, artifacts)
        tags = {"kd_runner.run_dir": str(info.run_dir), **({"kd_runner.sweep": info.group} if info.group else {})}
        tags |= {"kd_runner.tags": ",".join(info.tags)} if info.tags else {}
        run = self.client.create_run(experiment_id, run_name=info.name, tags=tags)
        self.run_id, self.run_dir = run.info.run_id, info.run_dir
        params = [Param(key, str(value)) for key, value in info.params.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created when new (by this job or, at the same time, by another of the sweep)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:
            return self.client.get_experiment_by_name(name).experiment_id

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
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, END_STATUS.get(record.get("status"), "FAILED"))
