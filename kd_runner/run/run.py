"""One run, top to bottom: claim the directory -> data -> teacher(s) -> soft targets -> student -> record.

`run(cfg, run_dir)` claims the directory and records how the run ends; `Run` carries what its steps
share, and `_experiment` takes the steps in order. Running again into the same directory skips a finished
run and resumes an unfinished one (kd_runner.store.rundir); result.json always says how the run stands
(kd_runner.status).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from kd_runner import loggers, user_code
from kd_runner.config import RunConfig, config_digest, result_key, user_targets
from kd_runner.data import build_dataset
from kd_runner.data.loader import StreamedData
from kd_runner.data.splits import InMemoryData, SplitData, sharded
from kd_runner.data.transfer import describe_transfer, transfer_data
from kd_runner.errors import Diverged, RunInterrupted
from kd_runner.run import results
from kd_runner.run.student import check_student_side, train_student, write_outputs
from kd_runner.runtime import distributed, interrupt
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.runtime.shared import Shared, shared_or_made
from kd_runner.status import Status
from kd_runner.store import rundir
from kd_runner.store.files import digest, write_csv, write_json
from kd_runner.teacher.ensemble import prepare_teachers
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine
from kd_runner.train.checkpoint import StageCheckpoint
from kd_runner.train.metrics import per_class_accuracy
from kd_runner.user_code import source_digest

log = logging.getLogger(__name__)


def run(
    cfg: RunConfig,
    run_dir: Path | str | None,
    stop: Callable[[], object] = interrupt.requested,
    reuse_from: Path | str | None = None,
    overrides: list[str] = (),
    shared: Shared | None = None,
) -> dict | None:
    """Run one experiment into `run_dir`; returns the record also written to result.json.

    A finished run of this config already in `run_dir` is returned as it is; an unfinished one resumes
    from its checkpoints. When `reuse_from` holds a completed run of an equal result key (a sweep's
    earlier job that this one cannot differ from), its results are recorded instead of training again.
    When `stop()` turns true (SIGTERM/SIGINT), the run saves a checkpoint at the next safe point, records
    itself as interrupted and raises RunInterrupted. A diverged run is recorded and returned with status
    "diverged"; any other error is recorded (status, message, exit code) and raised. `overrides`: the
    job's command-line overrides, recorded in result.json. `shared`: what the sweep's earlier jobs in this
    process prepared (kd_runner.runtime.shared), taken where this run's keys equal theirs.

    Under torchrun every process calls this: rank 0 with the run directory, records and writes; the
    others (run_dir=None) compute their part of the run, write nothing and return None.
    """
    shard, device = distributed.setup(resolve_device(cfg.device))
    digest = config_digest(cfg)
    identity = results.identity(cfg, device, overrides)
    if not shard.is_main:
        return _follow(Run(cfg, None, shard, device, stop, identity, shared), digest)
    with rundir.claim(run_dir) as run_dir:
        finished = rundir.finished_record(run_dir, digest)
        reused = None if finished else _reuse(cfg, run_dir, reuse_from, identity)
        shard.broadcast((digest, finished is not None or reused is not None))
        if reused is not None:
            return reused
        if finished is not None:
            log.info(
                "skipped: %s already holds this config's %s run (config digest %s)", run_dir, finished["status"], digest
            )
            return finished
        return _recorded(Run(cfg, run_dir, shard, device, stop, identity, shared))


def _recorded(run: Run) -> dict:
    """The experiment with result.json saying how it stands, and the trackers given its final record."""
    result_path = run.run_dir / rundir.RESULT
    record = results.running_record(run.identity)
    write_json(result_path, record)
    run.tracked = loggers.start(run.cfg, run.run_dir)
    try:
        if run.stop():  # stopped before it started: recorded like any interruption (a re-run starts it)
            raise RunInterrupted(None)
        record = _experiment(run)
        return record
    except Exception as caught:  # recorded, so a sweep's tables show it; only a divergence is final
        exc = user_code.blamed(caught, user_targets(run.cfg))  # raised in the user's code: one line naming it
        record = results.failure_record(run.identity, exc, signal=run.stop())
        write_json(result_path, record)
        if exc is not caught:
            raise exc from caught
        if not isinstance(exc, Diverged):
            raise
        for path in (rundir.init_checkpoint(run.run_dir), rundir.student_checkpoint(run.run_dir)):
            path.unlink(missing_ok=True)  # a re-run would diverge again
        return record
    finally:  # however the run ended
        run.tracked.finish(record)


def _reuse(cfg: RunConfig, run_dir: Path, owner_dir: Path | str | None, identity: dict) -> dict | None:
    """Record `owner_dir`'s completed run as this job's (result.json with `reused_from`, and its metrics.csv);
    None when there is nothing to reuse (no owner, or its run is not completed: then this job trains)."""
    owner = None if owner_dir is None else rundir.previous_record(owner_dir)
    if owner is None or owner.get("status") != Status.COMPLETED or owner.get("result_key") != result_key(cfg):
        return None
    write_csv(run_dir / "metrics.csv", pd.read_csv(Path(owner_dir) / "metrics.csv"))
    record = results.reused_record(identity, owner, Path(owner_dir))
    write_json(run_dir / rundir.RESULT, record)
    log.info("reused: %s holds a completed run of the same result key %s", owner_dir, record["result_key"])
    return record


def _follow(run: Run, digest: str) -> None:
    """A process other than rank 0: the same job as rank 0, unless rank 0 found it finished."""
    ranks_job, finished = run.shard.broadcast(None)
    if ranks_job != digest:  # rank 0 failed a job before telling: the processes would pair other jobs
        raise RuntimeError(f"rank 0 is on the job of config digest {ranks_job}, this process on {digest}")
    if not finished:
        with contextlib.suppress(Diverged):  # rank 0 records it
            _experiment(run)


@dataclass
class Run:
    """What the steps of one run share. `run_dir` None: a process other than rank 0 (writes nothing).
    `data` (the dataset, `data.source`, placed for training) and `student_data` (the student's training
    set: the same, or a transfer set) are set by `_place_data`; `tracked` by `_recorded`."""

    cfg: RunConfig
    run_dir: Path | None
    shard: distributed.Shard
    device: torch.device
    stop: Callable[[], object]
    identity: dict
    shared: Shared | None = None  # a sweep's work kept in memory for its later jobs
    compute: Compute | None = None
    data_key: str | None = None  # what `data` depends on (see _data_key)
    data: SplitData | None = None
    student_data: SplitData | None = None
    tracked: loggers.Trackers | None = None


@dataclass
class RunOutputs:
    """What the run records besides its metrics (see results.build_record)."""

    logits_source: str
    compute: dict
    transfer: dict
    per_class_accuracy: dict
    data: dict


def _experiment(run: Run) -> dict:
    """The steps in order: data, the student side's checks, teacher, soft targets, student, record."""
    prepared = prepare(run)
    cfg, student_data = run.cfg, prepared.student_data
    history, student, state = train_student(
        cfg,
        run.data.source,
        student_data,
        prepared.targets,
        prepared.checkpoints,
        run.shard.agreed(run.stop),
        prepared.recorder,
    )
    return finish(run, prepared, history, student, state)


@dataclass
class Prepared:
    """What the student stage starts from: the teacher and its soft targets, the student's data (this
    process's part), its checkpoints, the epoch recorder, and the timings and clock so far."""

    teacher: object
    targets: SoftTargets
    student_data: SplitData
    checkpoints: dict[str, StageCheckpoint]
    recorder: results.EpochRecorder
    timings: dict
    start: float
    student_start: float


def prepare(run: Run) -> Prepared:
    """The steps before the student is trained: data, the student side's checks, teacher, soft targets
    (kd_runner.run.together trains several runs' students from here)."""
    cfg, shard = run.cfg, run.shard
    timings, start = {}, time.perf_counter()
    run.compute = Compute.resolve(run.device, cfg.precision, cfg.memory_format, cfg.compile, cfg.threads)
    run.compute.configure_backends(cfg.deterministic)
    _place_data(run)
    dataset = run.data.source
    timings["data_s"] = time.perf_counter() - start
    check_student_side(cfg, dataset, run.data, run.student_data, shard)  # fails now, not after the teacher's
    # the teacher and its logits: made once by rank 0 (and cached), then loaded by the other processes
    recorder = results.EpochRecorder(run.run_dir, results.running_record(run.identity), run.tracked)
    teacher_epochs = partial(recorder.record, "teacher")
    teacher = shard.main_first(
        lambda: prepare_teachers(cfg, dataset, run.data, cfg.progress, run.stop, teacher_epochs, run.shared)
    )
    recorder.record("teacher", teacher.history)
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    targets = shard.main_first(lambda: _soft_targets(run, teacher))
    checkpoints = _student_checkpoints(run)
    return Prepared(teacher, targets, sharded(run.student_data, shard), checkpoints, recorder, timings, start, t0)


def finish(run: Run, prepared: Prepared, history: list[dict], student, state) -> dict:
    """The trained student's record, and (rank 0) the run's files."""
    cfg, shard, targets, student_data = run.cfg, run.shard, prepared.targets, prepared.student_data
    dataset, timings = run.data.source, prepared.timings
    timings["student_s"] = time.perf_counter() - prepared.student_start
    timings["total_s"] = time.perf_counter() - prepared.start

    threads = {"threads": run.compute.threads, "threads_from": run.compute.threads_from}
    run_settings = {**threads, "loader": _loader(cfg, dataset), "processes": shard.world}
    outputs = RunOutputs(
        logits_source=targets.source,
        compute={**run.compute.describe(), **run_settings, "deterministic": cfg.deterministic},
        transfer=describe_transfer(cfg, student_data, history[-1].get("omitted_bias")),
        per_class_accuracy=_per_class_accuracy(student, targets, student_data, dataset.num_classes),
        data=dataset.describe(),
    )
    record = results.build_record(
        identity=run.identity,
        cfg=cfg,
        history=history,
        teacher=prepared.teacher,
        student_model=student,
        timings=timings,
        outputs=outputs,
    )
    if run.run_dir is not None:
        write_outputs(run.run_dir, record, student, state, prepared.recorder.rows, prepared.checkpoints)
    return record


def _student_checkpoints(run: Run) -> dict[str, StageCheckpoint]:
    """The checkpoints of the init and student stages; none for a run across processes (it restarts them:
    its teacher and logits are cached)."""
    if run.run_dir is None or run.shard.world != 1:
        return {}
    digest = config_digest(run.cfg)
    paths = {"init": rundir.init_checkpoint(run.run_dir), "student": rundir.student_checkpoint(run.run_dir)}
    return {stage: StageCheckpoint(path, digest, stage) for stage, path in paths.items()}


def _loader(cfg: RunConfig, data) -> str:
    """How batches reach the model: the whole splits in memory, or streamed (asked for, or too big)."""
    return "dataloader" if cfg.loader == "dataloader" or data.streamed else "memory"


def _place_data(run: Run) -> None:
    """The dataset, its splits placed for training (in memory or streamed), and the student's splits."""
    cfg, compute, shard = run.cfg, run.compute, run.shard
    run.data_key = _data_key(cfg, compute)
    (data, run.data), _ = shared_or_made(run.shared, "data", run.data_key, lambda: _placed(cfg, compute, shard))
    log.info(
        "data: %s, %d train / %d val, %d classes, device %s",
        data.name,
        len(data.train),
        len(data.val),
        data.num_classes,
        compute.device,
    )
    settings = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in compute.describe().items())
    log.info("compute: %s, loader %s, %d process(es)", settings, _loader(cfg, data), shard.world)
    run.student_data = shard.main_first(lambda: transfer_data(cfg, data, run.data))
    if run.student_data is not run.data:
        log.info("transfer set: %s", describe_transfer(cfg, run.student_data))


def _placed(cfg: RunConfig, compute: Compute, shard) -> tuple:
    """(the dataset, its splits as training reads them: on the device, or streamed)."""
    data = shard.main_first(lambda: build_dataset(cfg.dataset))  # a download happens once, on rank 0
    if _loader(cfg, data) == "dataloader":
        return data, StreamedData(data, compute, cfg.num_workers)
    return data, InMemoryData(data, compute)


def _data_key(cfg: RunConfig, compute: Compute) -> str:
    """What the built and placed data depend on: the dataset's config and code, how it is computed and read."""
    code = source_digest(cfg.dataset.factory["_target_"], "dataset.factory._target_")
    read = {"loader": cfg.loader, "workers": cfg.num_workers}
    return digest({"dataset": dataclasses.asdict(cfg.dataset), "code": code, "compute": repr(compute), **read})


def _soft_targets(run: Run, teacher) -> SoftTargets:
    """The teacher's soft targets on the student's data; a sweep's earlier job's when its teacher, data and
    cache are this job's (then, as the logits cache would have said, their source is "cache")."""
    cfg = run.cfg
    key = f"{teacher.key} on {run.data_key} in {Path(cfg.cache_dir).resolve()}"
    shared = run.shared if run.student_data is run.data else None  # a transfer set is built for its job

    def make() -> SoftTargets:
        return SoftTargets(teacher.model, teacher.key, run.student_data, cfg.cache_dir, teacher.metrics_model)

    targets, made = shared_or_made(shared, "soft targets", key, make)
    if not made:
        targets = copy.copy(targets)
        targets.source = "cache"
    return targets


def _per_class_accuracy(student, targets: SoftTargets, d: SplitData, num_classes: int) -> dict:
    """Final per-class validation accuracy of the student and the teacher (None for a class without samples)."""
    logits = engine.predict(student, d, d.val.images)
    return {
        "student": per_class_accuracy(logits, d.val.labels, num_classes),
        "teacher": per_class_accuracy(targets.val, d.val.labels, num_classes),
    }
