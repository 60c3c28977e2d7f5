"""Experiment trackers (logger=...): what each tracker received, read back with its own reader."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, kd_run, read_run, start_kd_run, usage_error_line, wait_for_file
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from wandb.proto import wandb_internal_pb2

from kd_runner import loggers
from kd_runner.config import config_digest, result_key
from kd_runner.loggers.mlflow_run import store_uri

ALL = "logger=[csv,tensorboard,mlflow,wandb]"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A two-job sweep reporting to every tracker (MLflow in its default local store under outputs/)."""
    cwd = tmp_path_factory.mktemp("trackers")
    kd_run("-m", "experiment=smoke", "seed=0,1", ALL, "tags=[baseline,paper]", "hydra.sweep.dir=sweep", cwd=cwd)
    return cwd


def student_rows(job_dir: Path) -> pd.DataFrame:
    return read_run(job_dir)[1].query("stage == 'student'")


def test_tensorboard_holds_each_jobs_epochs_and_final_metrics(sweep):
    for job in ("0", "1"):
        events = EventAccumulator(str(sweep / "sweep" / job / "tensorboard"))
        events.Reload()
        acc = events.Scalars("student/student_acc")
        rows = student_rows(sweep / "sweep" / job)
        assert [e.step for e in acc] == rows["epoch"].tolist()
        assert [e.value for e in acc] == pytest.approx(rows["student_acc"].tolist())
        final = events.Scalars("final/student_acc")[-1].value
        assert final == pytest.approx(read_run(sweep / "sweep" / job)[0]["metrics"]["student_acc"])
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert session.hparams["seed"].number_value == int(job)
        (tags,) = events.Tensors("tags/text_summary")
        assert tags.tensor_proto.string_val == [b"baseline, paper"]


def test_mlflow_has_one_run_per_job_in_the_sweeps_experiment(sweep):
    uri, _ = store_uri(str(sweep / "outputs" / "mlflow"))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kd-runner/sweep")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]
    for job, run in runs.items():
        record, _ = read_run(sweep / "sweep" / job)
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == job
        assert run.data.tags["kd_runner.tags"] == "baseline,paper" and record["tags"] == ["baseline", "paper"]
        assert run.data.metrics["student_acc"] == pytest.approx(record["metrics"]["student_acc"])
        history = client.get_metric_history(run.info.run_id, "student/student_acc")
        rows = student_rows(sweep / "sweep" / job)
        assert [m.step for m in history] == rows["epoch"].tolist()
        assert [m.value for m in history] == pytest.approx(rows["student_acc"].tolist())
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "metrics.csv"} <= artifacts
        logged = json.loads(Path(client.download_artifacts(run.info.run_id, "result.json")).read_text())
        assert logged["metrics"] == record["metrics"]


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file: W&B's header, then LevelDB-log blocks of checksummed chunks holding
    wandb_internal_pb2.Record messages."""
    data, records, chunk, pos = run_file.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_files_hold_the_group_config_and_history(sweep):
    for job in ("0", "1"):
        (run_file,) = (sweep / "sweep" / job / "wandb").glob("offline-run-*/run-*.wandb")
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.HasField("run")]
        assert (run.project, run.run_group, run.display_name) == ("kd-runner", "sweep", job)
        assert list(run.tags) == ["baseline", "paper"]
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["seed"] == int(job)
        history = [
            {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.HasField("history")
        ]
        acc = [h["student/student_acc"] for h in history if "student/student_acc" in h]
        assert acc == pytest.approx(student_rows(sweep / "sweep" / job)["student_acc"].tolist())


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    err = usage_error_line(["experiment=smoke", "logger=[csv,wandb]", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert "pip install 'kd-runner[wandb]'" in err
    assert not (tmp_path / "run").exists()


def test_where_a_run_reports_to_is_not_part_of_its_digest_or_result_key():
    plain = compose_config("experiment=smoke")
    tracked = compose_config("experiment=smoke", "logger=[csv,mlflow]", "logger.project=other")
    assert tracked.logger != plain.logger
    assert (config_digest(tracked), result_key(tracked)) == (config_digest(plain), result_key(plain))
    assert config_digest(compose_config("experiment=smoke", "seed=1")) != config_digest(plain)


class Counting:
    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on = [], fail_on

    def __getattr__(self, method):
        def call(*args):
            self.calls.append(method)
            if method == self.fail_on:
                raise ConnectionError("server gone")

        return call


def test_a_tracker_that_fails_mid_run_warns_once_and_the_others_go_on(caplog):
    broken, working = Counting(fail_on="log_epoch"), Counting()
    tracked = loggers.Trackers({"mlflow": broken, "tensorboard": working})
    tracked.start(None)
    with caplog.at_level(logging.WARNING):
        tracked.log_rows("student", [{"epoch": 1}, {"epoch": 2}])
        tracked.log_rows("student", [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
        tracked.finish({})
    assert broken.calls == ["start", "log_epoch"]
    assert working.calls == ["start", "log_epoch", "log_epoch", "log_epoch", "finish"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "logger=mlflow failed" in warnings[0] and "server gone" in warnings[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; stopped after the test."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
    yield url, server
    if server.poll() is None:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.slow
def test_mlflow_server_gets_the_run_and_a_server_gone_only_warns(tmp_path, mlflow_server):
    url, server = mlflow_server
    common = ("experiment=smoke", "logger=mlflow", f"logger.tracking_uri={url}", "logger.project=served")
    kd_run(*common, "hydra.run.dir=run1", cwd=tmp_path)
    client = MlflowClient(tracking_uri=url)
    (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    record, _ = read_run(tmp_path / "run1")
    assert run.info.status == "FINISHED" and run.info.run_name == "run1"
    assert run.data.metrics["student_acc"] == pytest.approx(record["metrics"]["student_acc"])
    assert {"result.json", "metrics.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # the server goes away after the student's first epoch: one warning, and the run completes on its own
    proc = start_kd_run(*common, "student.epochs=10", "hydra.run.dir=run2", "checkpoint_every_s=0", cwd=tmp_path)
    wait_for_file(tmp_path / "run2" / "student_best.pt", proc)  # written with the first epoch's checkpoint
    os.killpg(server.pid, 15)
    server.wait(timeout=60)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    log = (tmp_path / "run2" / "kd-run.log").read_text()
    assert log.count("logger=mlflow failed") == 1, log
    record, metrics = read_run(tmp_path / "run2")
    assert record["status"] == "completed" and len(metrics.query("stage == 'student'")) == 10


def _start_and_finish(store: str, name: str, run_dir: str) -> None:
    from kd_runner.loggers import RunInfo
    from kd_runner.loggers.mlflow_run import MlflowTracker

    tracker = MlflowTracker(store)
    tracker.start(RunInfo(Path(run_dir), "kd-runner", "race", name, {"alpha": 0.5}, []))
    tracker.finish({"status": "completed", "metrics": {"student_acc": 0.5}})


def test_parallel_jobs_create_one_local_mlflow_store_without_losing_a_run(tmp_path):
    """Jobs that open a new local store at the same time (a joblib sweep) take turns creating its schema:
    every run is there, and the store stays usable."""
    import multiprocessing

    store = str(tmp_path / "mlflow")
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=_start_and_finish, args=(store, str(i), str(tmp_path))) for i in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=240)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kd-runner/race")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["0", "1", "2"]
    assert all(run.info.status == "FINISHED" for run in runs)
