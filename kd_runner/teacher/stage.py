"""The teacher stage: load a checkpoint, load a cached teacher, or fine-tune one and cache it.

A cached teacher is keyed by a digest of everything that determines it (architecture, recipe, teacher
seed, dataset config and content, starting checkpoint or pretrained weights, compute settings), so every
run of a sweep that shares a teacher recipe trains it once.
A lock serialises jobs that need the same teacher: the first trains and publishes it, the others wait
and load. Entries are published atomically (weights, then a manifest holding their sha256); an entry
whose weights do not match its manifest is reported, removed and rebuilt. While a teacher trains, its
checkpoint lives next to its entry, so an interrupted fine-tuning continues in whichever run needs that
teacher next.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kd_runner.config import RunConfig, stage_settings
from kd_runner.data import Dataset
from kd_runner.data.splits import SplitData
from kd_runner.models import build_stage_model
from kd_runner.models.torchvision_nets import pretrained_weights
from kd_runner.runtime.rng import seed_everything
from kd_runner.runtime.shared import shared_or_made
from kd_runner.store.cache import CacheEntry, cache_lock, miss_reason
from kd_runner.store.files import digest, sha256_file
from kd_runner.store.state_dicts import load_exact, read_state_dict
from kd_runner.teacher.logits_cache import data_digest
from kd_runner.train import engine
from kd_runner.train.checkpoint import StageCheckpoint
from kd_runner.train.metrics import accuracy
from kd_runner.user_code import source_digest

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass
class Teacher:
    model: torch.nn.Module
    source: str  # "trained", "cache" or "checkpoint"
    history: list[dict]  # per-epoch rows of its fine-tuning (also when loaded from the cache)
    key: str
    seconds: float
    metrics_model: torch.nn.Module | None = None  # what the teacher metrics see, if not `model` (ensembles)


def teacher_key(cfg: RunConfig, d: SplitData) -> str:
    """Digest of everything that determines the fine-tuned teacher (`teacher_key_parts`)."""
    return digest(teacher_key_parts(cfg, d))


def teacher_key_parts(cfg: RunConfig, d: SplitData) -> dict:
    """Everything that determines the fine-tuned teacher: its config, the content of the data it learns
    from (`d`), its starting weights (files, or torchvision's pretrained version) and how it computes (on a
    CPU the thread count too: it changes the last digits of the weights, so a cached teacher is always the
    very one this run would train, whichever job filled the cache)."""
    return {
        "format": CACHE_FORMAT,
        "teacher": stage_settings(cfg.teacher),  # the values it reads: equivalent configs are one teacher
        "dataset": dataclasses.asdict(cfg.dataset),
        "data": data_digest(d.source),
        "checkpoint_sha256": sha256_file(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else None,
        "weights_sha256": sha256_file(cfg.teacher.weights_path) if cfg.teacher.weights_path else None,
        "pretrained": pretrained_weights(cfg.teacher.name) if cfg.teacher.pretrained else None,
        "compute": d.compute.describe(),
        "model_source": source_digest(cfg.teacher.model["_target_"], "teacher.model._target_"),
        "data_source": source_digest(cfg.dataset.factory["_target_"], "dataset.factory._target_"),
    }


def prepare_teacher(
    cfg: RunConfig, data: Dataset, device_data: SplitData, progress: bool, stop=None, on_epoch=None, shared=None
) -> Teacher:
    """The teacher of `cfg`, from its checkpoint, the cache, or fine-tuned (`on_epoch(rows)` after each epoch).
    With `shared` (a sweep's kd_runner.runtime.shared.Shared) a teacher an earlier job of the sweep prepared
    under the same key and cache is taken as it is: what this job would have loaded from the cache."""
    start = time.perf_counter()
    parts = teacher_key_parts(cfg, device_data)  # hashes the weight files: once per job
    teacher, made = shared_or_made(
        shared,
        "teacher",
        f"{digest(parts)} in {Path(cfg.cache_dir).resolve()}",
        lambda: _prepare(cfg, data, device_data, parts, progress, stop, on_epoch),
    )
    if made:
        return teacher
    source = "checkpoint" if teacher.source == "checkpoint" else "cache"
    return dataclasses.replace(teacher, source=source, seconds=time.perf_counter() - start)


def _prepare(cfg: RunConfig, data: Dataset, device_data: SplitData, parts: dict, progress, stop, on_epoch) -> Teacher:
    """The teacher built, then loaded from its checkpoint, the cache, or fine-tuned; `parts`: its key's."""
    start = time.perf_counter()
    seed_everything(cfg.teacher.seed)  # the initial weights depend on the teacher's seed alone
    model = build_stage_model(cfg.teacher, data, "teacher")
    if cfg.teacher.checkpoint:
        load_exact(
            model,
            read_state_dict(cfg.teacher.checkpoint, "teacher.checkpoint"),
            f"teacher.checkpoint={cfg.teacher.checkpoint!r} does not match teacher {cfg.teacher.name} "
            f"({data.in_channels} input channels, {data.num_classes} classes)",
        )
    device_data.compute.prepare(model)
    if cfg.teacher.epochs == 0:
        log.info("teacher: loaded from checkpoint %s", cfg.teacher.checkpoint)
        return Teacher(model.eval(), "checkpoint", [], digest(parts), time.perf_counter() - start)
    history, source = _cached_or_trained(model, cfg, device_data, parts, progress, stop, on_epoch)
    return Teacher(model.eval(), source, history, digest(parts), time.perf_counter() - start)


def _cached_or_trained(model, cfg: RunConfig, d: SplitData, parts: dict, progress, stop, on_epoch) -> tuple[list, str]:
    """(history, source): the cached teacher loaded into `model` ("cache"), or `model` fine-tuned and
    cached ("trained"; the log says why none was cached: the nearest entry's differences in `parts`, the
    teacher key's parts); its checkpoint lives beside the entry until the entry holds the weights."""
    key = digest(parts)
    entry = cache_entry(cfg, key, "fine-tuning again")
    checkpoint = StageCheckpoint(entry.path.with_suffix(".ckpt"), key, "teacher")

    def fine_tune() -> tuple[dict, dict]:
        log.info("teacher: %s", miss_reason(entry.path, parts))
        log.info("teacher: fine-tuning %s for %d epochs (cache key %s)", cfg.teacher.name, cfg.teacher.epochs, key)
        history = _fine_tune(model, cfg, d, progress, checkpoint, stop, on_epoch)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return state, {"history": history, "teacher": dataclasses.asdict(cfg.teacher), "key_parts": parts}

    def fits(state, manifest) -> bool:  # loads the cached weights into `model` when they fit
        return isinstance(manifest.get("history"), list) and load_exact(model, state)

    with cache_lock(entry.path, stop, "teacher"):  # waiting, it still reacts to SIGTERM
        _, manifest, trained = entry.get_or_make(fine_tune, fits)
        if trained:
            checkpoint.remove()
        else:
            log.info("teacher: loaded from cache %s", entry.path.with_suffix(".pt"))
    return manifest["history"], "trained" if trained else "cache"


def cache_entry(cfg: RunConfig, key: str, redo: str) -> CacheEntry:
    """The cache entry of the teacher of `cfg` whose `teacher_key` is `key`; `redo`: what a broken one means."""
    return CacheEntry(Path(cfg.cache_dir) / "teachers" / f"{cfg.teacher.name}-{key}", "teacher cache entry", redo)


def _fine_tune(model, cfg: RunConfig, d: SplitData, progress: bool, checkpoint, stop, on_epoch) -> list[dict]:
    def validate() -> dict:
        logits = engine.predict(model, d, d.val.images)
        return {
            "teacher_acc": accuracy(logits, d.val.labels),
            "teacher_loss": float(F.cross_entropy(logits, d.val.labels)),
        }

    return engine.fit(
        model,
        d,
        stage="teacher",
        recipe=cfg.teacher,
        seed=cfg.teacher.seed,
        loss_fn=engine.cross_entropy_loss,
        validate=validate,
        progress=progress,
        checkpoint=checkpoint,
        stop=stop,
        on_epoch=on_epoch,
        checkpoint_every_s=cfg.checkpoint_every_s,
    )
