"""What a run leaves behind: metrics.csv (one row per stage and epoch), result.json and a summary.

Every record starts from the run's `identity` (what ran, where, with which software and overrides), so
the one builder of each kind of result.json is here.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import torchvision

import kd_runner
from kd_runner.config import config_digest, result_key, user_code_digests
from kd_runner.errors import Diverged, RunInterrupted, UserError, one_line
from kd_runner.loggers import Trackers
from kd_runner.methods import PART_COLUMNS
from kd_runner.models import count_parameters, model_size_mb
from kd_runner.names import METRIC_NAMES, TOP5_NAMES
from kd_runner.status import Status
from kd_runner.store.files import write_csv, write_json

CSV_COLUMNS = ("stage", "epoch", "lr", "train_loss", "teacher_loss", *METRIC_NAMES, *TOP5_NAMES, *PART_COLUMNS)
BEST_STUDENT = "student_best.pt"  # the student of the epoch with the best validation student_acc


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """One row per stage and epoch; the top-5 and loss-part columns only where a row has them (the
    dataset has more than 5 classes; the method has those parts)."""
    optional = (*TOP5_NAMES, *PART_COLUMNS)
    columns = [c for c in CSV_COLUMNS if c not in optional or any(c in row for row in rows)]
    write_csv(path, pd.DataFrame(rows, columns=columns))


def best_row(history: list[dict]) -> dict:
    """The student epoch with the highest validation student_acc (the first one on a tie)."""
    return max(history, key=lambda row: row["student_acc"])


class EpochRecorder:
    """Rewrites metrics.csv and the running result.json after every epoch, so a crash or a kill leaves
    every finished epoch on disk and result.json says how far the run got, and sends the new rows to the
    run's `trackers`. `run_dir` None (a process other than rank 0): writes nothing."""

    def __init__(self, run_dir: Path | None, running: dict, trackers: Trackers | None = None):
        self.run_dir, self.running, self.trackers = run_dir, running, trackers
        self.rows: dict[str, list[dict]] = {}

    def record(self, stage: str, rows: list[dict]) -> None:
        """`rows`: the stage's rows so far (an ensemble's rows carry their own stage names)."""
        if self.run_dir is None or not rows:
            return
        self.rows[stage] = rows
        all_rows = [{"stage": name, **row} for name, stage_rows in self.rows.items() for row in stage_rows]
        write_metrics_csv(self.run_dir / "metrics.csv", all_rows)
        write_json(
            self.run_dir / "result.json", {**self.running, "last_epoch": {"stage": stage, "epoch": rows[-1]["epoch"]}}
        )
        if self.trackers is not None:
            self.trackers.log_rows(stage, rows)


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "kd_runner": kd_runner.__version__,
    }


def _model_info(name: str, model: torch.nn.Module) -> dict:
    return {"name": name, "params": count_parameters(model), "size_mb": round(model_size_mb(model), 4)}


def build_record(*, identity, cfg, history, teacher, student_model, timings, outputs) -> dict:
    """The completed run's result.json: final-epoch metrics (plus best_student_acc, never instead) and the
    best epoch (its student is student_best.pt; chosen on the validation split, so its accuracy is biased
    upward), the models, the teacher and where its logits came from, timings, and `outputs`' descriptions
    of the compute settings, the transfer set, the per-class accuracy and the data's shape and
    normalisation (to load the student without the data)."""
    final = history[-1]
    metrics = {name: final[name] for name in (*METRIC_NAMES, *TOP5_NAMES) if name in final}
    best = best_row(history)
    metrics["best_student_acc"] = best["student_acc"]
    t_info = _model_info(cfg.teacher.label, teacher.model)
    s_info = _model_info(cfg.student.label, student_model)
    return {
        "status": Status.COMPLETED,
        "metrics": metrics,
        "epochs": {"teacher": cfg.teacher.epochs, "student": final["epoch"]},
        "best": {"epoch": best["epoch"], "student_acc": best["student_acc"], "weights": BEST_STUDENT},
        "models": {
            "teacher": t_info,
            "student": s_info,
            "compression_ratio": round(t_info["params"] / s_info["params"], 4),
        },
        "teacher": {"source": teacher.source, "cache_key": teacher.key, "logits": outputs.logits_source},
        "timings_s": {k.removesuffix("_s"): round(v, 3) for k, v in timings.items()},
        **identity,
        "compute": outputs.compute,
        "transfer": outputs.transfer,
        "per_class_accuracy": outputs.per_class_accuracy,
        "data": outputs.data,
    }


def reused_record(identity: dict, owner: dict, owner_dir: Path) -> dict:
    """result.json of a job that reuses the completed run in `owner_dir` (of an equal result_key): the owner's
    results, this job's own identity, and `reused_from` saying whose results they are."""
    return {**owner, **identity, "reused_from": str(owner_dir)}


def running_record(identity: dict) -> dict:
    """result.json while the run is in progress."""
    return {"status": Status.RUNNING, **identity}


def failure(exc: BaseException, signal: str | None = None) -> dict:
    """How a run that ended with `exc` instead of completing stands: its status, where it stopped (the
    fields the error carries), why, and the exit code kd-run gives it (1 for a bug)."""
    ours = isinstance(exc, (UserError, RunInterrupted, Diverged))
    status = exc.status if ours else Status.FAILED
    details = {**exc.details, "signal": signal} if isinstance(exc, RunInterrupted) else getattr(exc, "details", {})
    return {
        "status": status,
        **details,
        "message": str(exc) if ours else one_line(exc),
        "exit_code": exc.exit_code if ours else 1,
    }


def failure_record(identity: dict, exc: BaseException, signal: str | None = None) -> dict:
    """result.json of a run that ended with `exc` (see `failure`)."""
    return {**failure(exc, signal), **identity}


def identity(cfg, device, overrides: list[str]) -> dict:
    """What ran, where and with which software: part of every record. `overrides`: the job's own
    command-line overrides (a sweep's tables read its swept keys from them)."""
    return {
        "device": str(device),
        "config_digest": config_digest(cfg),
        "result_key": result_key(cfg),
        "config": asdict(cfg),
        "user_code": user_code_digests(cfg),  # the source digests of the user's code it names (aggregation)
        "versions": versions(),
        "command": sys.argv,
        "overrides": list(overrides),
        "tags": list(cfg.tags),
    }


def summary(record: dict, run_dir: Path) -> str:
    """A one-screen, human-readable summary of a finished run."""
    m, models, cfg = record["metrics"], record["models"], record["config"]
    lines = [
        f"kd-run {record['status']}: {models['teacher']['name']} -> {models['student']['name']} on "
        f"{cfg['dataset']['name']}, distill={cfg['distill']['method']} alpha={cfg['alpha']} T={cfg['temperature']} "
        f"soft_loss={cfg['soft_loss']} "
        f"seed={cfg['seed']} ({record['device']})",
        f"  teacher: {record['teacher']['source']}, {models['teacher']['params']:,} params "
        f"({models['teacher']['size_mb']:.2f} MB), acc {m['teacher_acc']:.4f}",
        f"  student: {models['student']['params']:,} params ({models['student']['size_mb']:.2f} MB), "
        f"compression x{models['compression_ratio']:.1f}",
        f"  student_acc {m['student_acc']:.4f} (best {m['best_student_acc']:.4f})  student_loss {m['student_loss']:.4f}"
        f"  objective {m['objective']:.4f}",
        f"  agreement {m['agreement']:.4f}  logit_gap {m['logit_gap']:.4f}"
        f"  kl_teacher_student {m['kl_teacher_student']:.4f}",
        "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in record["timings_s"].items()),
        f"  outputs: {run_dir}",
    ]
    return "\n".join(lines)


def job_line(num: int, overrides: list[str], record: dict, skipped: bool = False) -> str:
    """One line for a sweep job: number, overrides, status, final student_acc and time (a failure or a
    divergence is reported on its own line)."""
    parts = [str(record.get("status", Status.INCOMPLETE)) + (" (skipped: finished before)" if skipped else "")]
    if "metrics" in record:
        parts.append(f"student_acc {record['metrics']['student_acc']:.4f}")
    if "timings_s" in record:
        parts.append(f"{record['timings_s']['total']:.1f}s")
    return f"#{num} {' '.join(overrides)}: " + ", ".join(parts)
