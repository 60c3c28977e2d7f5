"""Experiment trackers (logger=...): what each tracker received, read back with its own reader."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, free_port, kd_run, read_run, start_kd_run, usage_error_line, wait_for_file
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from wandb.proto import wandb_internal_pb2

from kd_runner import loggers
from kd_runner.cli import compose
from kd_runner.config import config_digest, result_key
from kd_runner.loggers.mlflow_run import store_uri

ALL = "logger=[csv,tensorboard,mlflow,wandb]"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A two-job sweep reporting to every tracker (MLflow in its default local store under outputs/), the
    student's weights kept as an artifact."""
    cwd = tmp_path_factory.mktemp("trackers")
    kd_run(
        "-m",
        "experiment=smoke",
        "seed=0,1",
        ALL,
        "tags=[baseline,paper]",
        "logger.log_model=true",
        "hydra.sweep.dir=sweep",
        cwd=cwd,
    )
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
        assert set(session.hparams) == set(loggers.MAIN_KEYS)  # the keys that matter, none without a value
        assert session.hparams["teacher"].string_value == "cnn" and session.hparams["distill"].string_value == "kd"


def test_tensorboard_hparams_are_the_main_keys_and_the_swept_ones_without_none():
    cfg = compose_config("experiment=smoke")
    cfg = compose.named(cfg, ["experiment=smoke", "student.width=8", "dataset.val_fraction=0.3"], ["student.width"])
    shown = loggers.hparams(cfg)
    assert list(shown) == [*loggers.MAIN_KEYS, "student.width"]
    assert None not in shown.values() and cfg.teacher.checkpoint is None
    assert len(loggers.params(cfg)) > 50  # MLflow and W&B still get the whole config


def test_mlflow_has_a_run_per_job_named_by_its_overrides_under_the_sweeps_parent_run(sweep):
    uri, _ = store_uri(str(sweep / "outputs" / "mlflow"))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kd-runner/sweep")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["seed=0", "seed=1", "sweep over seeds"]
    parent = runs.pop("sweep over seeds")
    sweep_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "runs.csv", "summary.md", "curves.png", "final_accuracy.png"} <= sweep_files
    logged = Path(client.download_artifacts(parent.info.run_id, "summary.csv")).read_bytes()
    assert logged == (sweep / "sweep" / "summary.csv").read_bytes()
    for name, run in runs.items():
        job = name.removeprefix("seed=")
        record, _ = read_run(sweep / "sweep" / job)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["seed"] == job
        assert run.data.tags["kd_runner.tags"] == "baseline,paper" and record["tags"] == ["baseline", "paper"]
        assert run.data.metrics["student_acc"] == pytest.approx(record["metrics"]["student_acc"])
        history = client.get_metric_history(run.info.run_id, "student/student_acc")
        rows = student_rows(sweep / "sweep" / job)
        assert [m.step for m in history] == rows["epoch"].tolist()
        assert [m.value for m in history] == pytest.approx(rows["student_acc"].tolist())
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "metrics.csv", "student.pt"} <= artifacts
        logged = json.loads(Path(client.download_artifacts(run.info.run_id, "result.json")).read_text())
        assert logged["metrics"] == record["metrics"]
        weights = Path(client.download_artifacts(run.info.run_id, "student.pt")).read_bytes()
        assert weights == (sweep / "sweep" / job / "student.pt").read_bytes()


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
        assert (run.project, run.run_group, run.display_name) == ("kd-runner", "sweep", f"seed={job}")
        axes = {r.metric.glob_name: r.metric.step_metric for r in records if r.metric.glob_name}
        assert axes == {"teacher/*": "teacher/epoch", "student/*": "student/epoch"}  # a step axis per stage
        (model,) = [r.artifact for r in records if r.HasField("artifact")]
        assert model.type == "model" and [c.path for c in model.manifest.contents] == ["student.pt"]
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


def test_a_sweeps_jobs_are_named_by_the_overrides_that_differ_between_them():
    cfg = compose_config("experiment=smoke")
    overrides = [["experiment=smoke", f"alpha={a}", f"+seed={s}"] for a in (0.5, 1) for s in (0, 1)]
    planned = [compose.Job(num, cfg, None, job) for num, job in enumerate(overrides)]
    compose.name_sweep_jobs(planned)
    assert [job.cfg.logger.name for job in planned] == [
        "alpha=0.5,seed=0",
        "alpha=0.5,seed=1",
        "alpha=1,seed=0",
        "alpha=1,seed=1",
    ]
    assert planned[0].cfg.logger.hparams == ["alpha", "seed"]
    given = compose.named(compose_config("experiment=smoke", "logger.name=mine"), ["alpha=0"], ["alpha"])
    assert given.logger.name == "mine"
    assert compose.sweep_group("outputs/sweeps/2026-12-04/18-20-19-123456") == "2026-12-04/18-20-19-123456"


def test_a_timm_network_is_named_by_its_architecture():
    teacher = compose_config("experiment=smoke", "teacher=timm", "teacher.model.arch=resnet50d").teacher
    assert (teacher.name, teacher.label) == ("timm", "timm/resnet50d")
    assert compose_config("experiment=smoke").teacher.label == "cnn"
    cfg = compose_config("experiment=smoke", "teacher=timm", "student=timm", "student.model.arch=resnet10t")
    assert loggers.hparams(cfg)["teacher"] == "timm/resnet18" and loggers.hparams(cfg)["student"] == "timm/resnet10t"


def test_strict_refuses_an_unreachable_mlflow_server_in_one_line_before_anything_runs(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["experiment=smoke", "logger=mlflow", f"logger.tracking_uri={url}", f"hydra.run.dir={tmp_path / 'run'}"]
    err = usage_error_line([*args, "logger.strict=true"], capsys)
    assert err.startswith("kd-run: error: logger.strict=true: logger=mlflow is not usable") and url in err
    assert not (tmp_path / "run").exists()


def test_strict_refuses_a_local_store_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    store = tmp_path / "file" / "mlflow"
    args = ["experiment=smoke", "logger=mlflow", f"logger.tracking_uri={store}", "logger.strict=true"]
    err = usage_error_line([*args, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert err == (
        f"kd-run: error: logger.strict=true: logger.tracking_uri={str(store)!r} cannot be created: "
        f"{tmp_path / 'file'} is a file, not a directory"
    )


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
    tracker.start(RunInfo(Path(run_dir), "kd-runner", "race", name, {"alpha": 0.5}, {"alpha": 0.5}, []))
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


@pytest.mark.slow
def test_a_searchs_trials_are_named_by_their_searched_values_under_the_searchs_parent_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    search = ("hparams_search=alpha_temperature", "experiment=smoke", "hydra.sweeper.n_trials=2")
    kd_run(*search, "logger=mlflow", "hydra.sweep.dir=search", cwd=tmp_path)
    client = MlflowClient(tracking_uri=store_uri(str(tmp_path / "outputs" / "mlflow"))[0])
    experiment = client.get_experiment_by_name("kd-runner/search")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    parent = runs.pop("sweep over alpha x temperature")
    assert parent.info.status == "FINISHED"
    assert {"trials.csv", "best_params.json", "optimization_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    trials = [json.loads(p.read_text()) for p in sorted((tmp_path / "search").glob("*/result.json"))]
    names = {",".join(o for o in t["overrides"] if o.startswith(("alpha=", "temperature="))) for t in trials}
    assert set(runs) == names and len(names) == 2
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in runs.values())
