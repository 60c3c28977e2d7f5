"""One knowledge-distillation run: data -> teacher(s) -> soft targets -> student stage -> results.

`check_job(cfg, job_dir, ...)` refuses, before anything is written, a job that cannot run here;
`run(cfg, run_dir)` is the whole experiment. The CLI composes the config and calls both. Running again
into the same directory skips a finished run and resumes an unfinished one (kd_runner.store.rundir);
result.json always says how the run stands (kd_runner.status).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from kd_runner import trackers
from kd_runner.config import RunConfig, config_digest, result_key
from kd_runner.data import build_dataset
from kd_runner.data.device import InMemoryData, SplitData, sharded
from kd_runner.data.loader import StreamedData
from kd_runner.data.transfer import describe_transfer, raise_omitted_bias, transfer_data
from kd_runner.data.vision import check_root
from kd_runner.errors import Diverged, RunInterrupted
from kd_runner.methods import PART_COLUMNS, objective
from kd_runner.methods import make as make_method
from kd_runner.models import build_stage_model
from kd_runner.models.custom import check_output
from kd_runner.runtime import distributed, interrupt
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.runtime.rng import seed_everything
from kd_runner.status import Status
from kd_runner.store import results, rundir
from kd_runner.store.files import check_writable, save_torch, write_csv, write_json
from kd_runner.teacher.ensemble import prepare_teachers
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine
from kd_runner.train.checkpoint import StageCheckpoint
from kd_runner.train.metrics import compute_metrics, per_class_accuracy

log = logging.getLogger(__name__)


def check_job(cfg: RunConfig, job_dir: Path | str | None, *, dir_key: str, processes: int = 1) -> None:
    """Raise UserError (one line) when the job cannot run here, before it writes anything: an absent
    device or precision, a batch that does not split across `processes`, a data folder that is not there,
    a cache or job directory (`dir_key` names the setting) that cannot be written, or a job directory that
    holds a run of another config (a stage whose training split is too small for a step is refused once the
    data is built: `engine.check_steps`). `job_dir` None: known only once the job runs (checked then)."""
    Compute.resolve(resolve_device(cfg.device), cfg.precision, cfg.memory_format, cfg.compile)
    for name, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
        if stage.epochs > 0:  # a batch that no process can take 2 samples of is dropped: no step at all
            distributed.Shard(0, processes).check_batch_size(stage.batch_size, f"{name}.batch_size")
    for data_cfg in (cfg.dataset, cfg.transfer.dataset):
        if data_cfg is not None:
            check_root(data_cfg)
    _check_user_code(cfg)
    trackers.check_installed(cfg.logger)
    check_writable(cfg.cache_dir, "cache_dir")
    if job_dir is not None:
        check_writable(job_dir, dir_key)
        rundir.finished_record(job_dir, config_digest(cfg))


def _check_user_code(cfg: RunConfig) -> None:
    """With a dataset or network of the user's own (`_target_`), build the dataset and both networks now and
    run each network on one batch, so a mistake in them is one line before anything is written."""
    if all(spec["_target_"] is None for spec in (cfg.dataset.factory, cfg.teacher.model, cfg.student.model)):
        return
    data = build_dataset(cfg.dataset)
    images = data.sample_batch()
    for key, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
        target = stage.model["_target_"]
        what = f"{key}.name={stage.name}" if target is None else f"{key}.model._target_={target}"
        check_output(build_stage_model(stage, data, key), images, data.num_classes, what)


def run(
    cfg: RunConfig,
    run_dir: Path | str | None,
    stop: Callable[[], object] = interrupt.requested,
    reuse_from: Path | str | None = None,
) -> dict | None:
    """Run one experiment into `run_dir`; returns the record also written to result.json.

    A finished run of this config already in `run_dir` is returned as it is; an unfinished one resumes
    from its checkpoints. When `reuse_from` holds a completed run of an equal result key (a sweep's
    earlier job that this one cannot differ from), its results are recorded instead of training again.
    When `stop()` turns true (SIGTERM/SIGINT), the run saves a checkpoint at the next safe point, records
    itself as interrupted and raises RunInterrupted. A diverged run is recorded and returned with status
    "diverged"; any other error is recorded (status, message, exit code) and raised.

    Under torchrun every process calls this: rank 0 with the run directory, records and writes; the
    others (run_dir=None) compute their part of the run, write nothing and return None.
    """
    shard, device = distributed.setup(resolve_device(cfg.device))
    digest = config_digest(cfg)
    if not shard.is_main:
        return _follow(cfg, device, shard, stop, digest)
    with rundir.claim(run_dir) as run_dir:
        finished = rundir.finished_record(run_dir, digest)
        reused = None if finished else _reuse(cfg, run_dir, reuse_from, device)
        shard.broadcast((digest, finished is not None or reused is not None))
        if reused is not None:
            return reused
        if finished is not None:
            log.info(
                "skipped: %s already holds this config's %s run (config digest %s)", run_dir, finished["status"], digest
            )
            return finished
        result_path = run_dir / rundir.RESULT
        write_json(result_path, results.running_record(cfg, device))
        tracked = trackers.start(cfg, run_dir)
        try:
            if stop():  # stopped before it started: recorded like any interruption (a re-run starts it)
                raise RunInterrupted(None)
            return _experiment(cfg, run_dir, device, shard, stop, tracked)
        except Exception as exc:  # recorded, so a sweep's tables show it; only a divergence is final
            record = results.failure_record(cfg, device, exc, signal=stop())
            write_json(result_path, record)
            if not isinstance(exc, Diverged):
                raise
            rundir.student_checkpoint(run_dir).unlink(missing_ok=True)  # a re-run would diverge again
            return record
        finally:  # the trackers get the record as result.json holds it, however the run ended
            tracked.finish(rundir.previous_record(run_dir) or {})


def _reuse(cfg: RunConfig, run_dir: Path, owner_dir: Path | str | None, device: torch.device) -> dict | None:
    """Record `owner_dir`'s completed run as this job's (result.json with `reused_from`, and its metrics.csv);
    None when there is nothing to reuse (no owner, or its run is not completed: then this job trains)."""
    owner = None if owner_dir is None else rundir.previous_record(owner_dir)
    if owner is None or owner.get("status") != Status.COMPLETED or owner.get("result_key") != result_key(cfg):
        return None
    write_csv(run_dir / "metrics.csv", pd.read_csv(Path(owner_dir) / "metrics.csv"))
    record = results.reused_record(cfg, device, owner, Path(owner_dir))
    write_json(run_dir / rundir.RESULT, record)
    log.info("reused: %s holds a completed run of the same result key %s", owner_dir, record["result_key"])
    return record


def _follow(cfg: RunConfig, device: torch.device, shard: distributed.Shard, stop, digest: str) -> None:
    """A process other than rank 0: the same job as rank 0, unless rank 0 found it finished."""
    ranks_job, finished = shard.broadcast(None)
    if ranks_job != digest:  # rank 0 failed a job before telling: the processes would pair other jobs
        raise RuntimeError(f"rank 0 is on the job of config digest {ranks_job}, this process on {digest}")
    if not finished:
        with contextlib.suppress(Diverged):  # rank 0 records it
            _experiment(cfg, None, device, shard, stop)


@dataclass
class RunOutputs:
    """What the run records besides its metrics (see results.build_record)."""

    logits_source: str
    compute: dict
    transfer: dict
    per_class_accuracy: dict
    data: dict


def _experiment(
    cfg: RunConfig,
    run_dir: Path | None,
    device: torch.device,
    shard: distributed.Shard,
    stop: Callable[[], object],
    tracked: trackers.Trackers | None = None,
) -> dict:
    timings, start = {}, time.perf_counter()
    compute = Compute.resolve(device, cfg.precision, cfg.memory_format, cfg.compile, cfg.threads)
    compute.configure_backends(cfg.deterministic)
    data, split_data, student_data = _place_data(cfg, compute, shard)
    timings["data_s"] = time.perf_counter() - start
    _check_student_side(cfg, data, split_data, student_data, shard)  # fails now, not after the teacher's training
    # the teacher and its logits: made once by rank 0 (and cached), then loaded by the other processes
    recorder = results.EpochRecorder(run_dir, results.running_record(cfg, device), tracked)
    teacher_epochs = partial(recorder.record, "teacher")
    teacher = shard.main_first(lambda: prepare_teachers(cfg, data, split_data, cfg.progress, stop, teacher_epochs))
    recorder.record("teacher", teacher.history)
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    targets = shard.main_first(
        lambda: SoftTargets(teacher.model, teacher.key, student_data, cfg.cache_dir, teacher.metrics_model)
    )
    checkpoint = None  # a run across processes restarts its student stage (its teacher and logits are cached)
    if run_dir is not None and shard.world == 1:
        checkpoint = StageCheckpoint(rundir.student_checkpoint(run_dir), config_digest(cfg), "student")
    student_data = sharded(student_data, shard)
    history, student, state = _train_student(cfg, data, student_data, targets, checkpoint, shard.agreed(stop), recorder)
    timings["student_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    run_settings = {"threads": compute.threads, "loader": _loader(cfg, data), "processes": shard.world}
    outputs = RunOutputs(
        logits_source=targets.source,
        compute={**compute.describe(), **run_settings, "deterministic": cfg.deterministic},
        transfer=describe_transfer(cfg, student_data, history[-1].get("omitted_bias")),
        per_class_accuracy=_per_class_accuracy(student, targets, student_data, data.num_classes),
        data=data.describe(),
    )
    record = results.build_record(
        cfg=cfg,
        history=history,
        teacher=teacher,
        student_model=student,
        device=device,
        timings=timings,
        outputs=outputs,
    )
    if run_dir is not None:
        _write_outputs(run_dir, record, student, state, teacher.history, history, checkpoint)
    return record


def _loader(cfg: RunConfig, data) -> str:
    """How batches reach the model: the whole splits in memory, or streamed (asked for, or too big)."""
    return "dataloader" if cfg.loader == "dataloader" or data.streamed else "memory"


def _place_data(cfg: RunConfig, compute: Compute, shard: distributed.Shard):
    """The dataset, its splits placed for training (in memory or streamed), and the student's splits."""
    data = shard.main_first(lambda: build_dataset(cfg.dataset))  # a download happens once, on rank 0
    loader = _loader(cfg, data)
    split_data = StreamedData(data, compute, cfg.num_workers) if loader == "dataloader" else InMemoryData(data, compute)
    log.info(
        "data: %s, %d train / %d val, %d classes, device %s",
        data.name,
        len(data.train),
        len(data.val),
        data.num_classes,
        compute.device,
    )
    settings = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in compute.describe().items())
    log.info("compute: %s, loader %s, %d process(es)", settings, loader, shard.world)
    student_data = shard.main_first(lambda: transfer_data(cfg, data, split_data))
    if student_data is not split_data:
        log.info("transfer set: %s", describe_transfer(cfg, student_data))
    return data, split_data, student_data


def _check_student_side(cfg: RunConfig, data, split_data: SplitData, student_data: SplitData, shard) -> None:
    """Mistakes that would only show in the student stage: too few samples for a step, weights that do not
    fit, a feature layer that is not there."""
    engine.check_steps(len(split_data.train), cfg.teacher, shard, "teacher")
    engine.check_steps(len(student_data.train), cfg.student, shard, "student")
    if cfg.student.weights_path or cfg.student.pretrained:
        build_stage_model(cfg.student, data, "student")
    method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
    if method.needs != "logits":
        _check_layers(cfg, method, data, split_data)
    if cfg.alpha < 1 and method.checks_a_batch:  # so does a user objective that gives no loss
        student = build_stage_model(
            dataclasses.replace(cfg.student, pretrained=False, weights_path=None), data, "student"
        )
        objective.check_on_batch(method, student.to(student_data.device), student_data)


def _check_layers(cfg: RunConfig, method, data, split_data: SplitData) -> None:
    """Resolve the feature method's layers on freshly built models of both architectures (one line if wrong)."""
    stages = {
        name: dataclasses.replace(getattr(cfg, name), pretrained=False, weights_path=None)
        for name in ("student", "teacher")
    }  # the architectures only
    models = [build_stage_model(stage, data, name).to(split_data.device) for name, stage in stages.items()]
    layers = cfg.distill.student_layers, cfg.distill.teacher_layers
    for tap in objective.feature_taps(method, *layers, *models, objective.sample_batch(split_data)):
        tap.remove()


def _write_outputs(run_dir: Path, record: dict, student, state, teacher_rows, student_rows, checkpoint) -> None:
    save_torch(_cpu_state(student), run_dir / "student.pt")
    if state.trainable is not None:  # the method's trained parameters (FitNets' regressors), beside the student
        save_torch(_cpu_state(state.trainable), run_dir / "distill.pt")
    rows = [{"stage": "teacher", **r} for r in teacher_rows] + [{"stage": "student", **r} for r in student_rows]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    write_json(run_dir / rundir.RESULT, record)
    if checkpoint is not None:
        checkpoint.remove()  # the completed record is final: the run will not resume again


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _train_student(cfg: RunConfig, data, d: SplitData, targets: SoftTargets, checkpoint, stop, recorder):
    """Distill the student with the configured method (kd_runner.methods); the teacher itself never
    enters the student's graph. The method's state trains and is checkpointed with the student.

    After every epoch `recorder` writes its metrics and, on a new best validation student_acc, the
    student is saved as student_best.pt (before the epoch's checkpoint, so a resume never misses one)."""
    seed_everything(cfg.seed)
    student = d.compute.prepare(build_stage_model(cfg.student, data, "student"))
    method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
    model, loss = objective.build(method, cfg.alpha, student, targets, d, cfg.student.batch_size)
    evaluate = _student_evaluation(model, student, loss, targets, d)

    def on_epoch(rows: list[dict]) -> None:
        recorder.record("student", rows)
        if recorder.run_dir is not None and results.best_row(rows) is rows[-1]:
            save_torch(_cpu_state(student), recorder.run_dir / results.BEST_STUDENT)

    history = engine.fit(
        d.shard.wrap(model),
        d,
        stage="student",
        recipe=cfg.student,
        seed=cfg.seed,
        loss_fn=loss,
        evaluate=evaluate,
        on_epoch_start=method.start_epoch,
        checkpoint_every_s=cfg.checkpoint_every_s,
        progress=cfg.progress,
        checkpoint=checkpoint,
        stop=stop,
        on_epoch=on_epoch,
        temperature=cfg.temperature if cfg.alpha < 1 else None,
    )
    if not history:  # student.epochs=0: evaluate the untrained (or pretrained) student once
        history = [{"epoch": 0, "lr": None, "train_loss": None, **evaluate()}]
        on_epoch(history)
    if cfg.transfer.omitted_bias is not None:  # the final metrics are those of the corrected student
        corrected = {k: v for k, v in evaluate().items() if k not in PART_COLUMNS}  # the parts stay the epoch's
        history[-1].update(omitted_bias=raise_omitted_bias(cfg, student, targets.teacher, d), **corrected)
    loss.close()
    return history, student, model.state


def _student_evaluation(model, student, loss, targets: SoftTargets, d: SplitData):
    """The student's validation after an epoch: the metrics, the objective at this epoch's weights (a
    warm-up's), and the epoch's mean of each part of the training loss; no training state changes."""

    def evaluate() -> dict:
        parts = model.state.take_parts(d.shard)  # before rank 0's buffers (the tally among them) replace the others'
        d.shard.sync_buffers(model)
        logits = engine.predict(student, d, d.val.images)
        value = loss.validation(model, d, logits, d.val.labels)  # at this epoch's warm-up
        return {**compute_metrics(logits, targets.val, d.val.labels, value), **parts}

    return evaluate


def _per_class_accuracy(student, targets: SoftTargets, d: SplitData, num_classes: int) -> dict:
    """Final per-class validation accuracy of the student and the teacher (None for a class without samples)."""
    logits = engine.predict(student, d, d.val.images)
    return {
        "student": per_class_accuracy(logits, d.val.labels, num_classes),
        "teacher": per_class_accuracy(targets.val, d.val.labels, num_classes),
    }
