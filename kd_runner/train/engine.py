"""The training loop: one pass over the training split, a stage of epochs, and prediction.

One loop serves both stages: the caller passes the loss as a function of (logits, batch indices,
labels, inputs), so the teacher stage uses plain cross-entropy and the student stage the distillation
objective. `inputs` is the normalised (and, with augmentation, augmented) batch the model saw, so a
teacher can be run on exactly that batch. Batches are index tensors into the data (kd_runner.data.splits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd_runner.config import StageConfig
from kd_runner.data.splits import SplitData, index_batches, steps_per_epoch
from kd_runner.errors import Diverged, RunInterrupted, UserError
from kd_runner.train.checkpoint import EpochPosition, StageCheckpoint
from kd_runner.train.optim import make_optimizer, make_scheduler
from kd_runner.train.progress import BatchBar, EpochLog

USUAL_LR = {"sgd": 1.0, "adam": 0.01, "adamw": 0.01}  # above these, the step size is the likely cause
USUAL_TEMPERATURE = 20.0  # Hinton et al. use 1 to 20; the soft term's gradients grow with T
USUAL_WEIGHT_FACTOR = 100  # a method weight this many times its default (or 1) is the likely cause

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def predict(model: torch.nn.Module, data: SplitData, images, *, batch_size: int | None = None) -> torch.Tensor:
    """Logits (float32) for all `images` (a split's `images` of `data`), in eval mode, large batches
    (`Compute.eval_batch_size` by default), inference mode and the data's precision; across processes
    each computes a share and all get all.

    Every batch has one shape (min(batch size, images)): a short last batch is padded with copies of its
    last image, whose outputs are dropped. The network then sees a single evaluation shape per split size,
    so cuDNN's autotuning and compiled graphs do not start over for a ragged last batch.
    The result is concatenated outside inference mode, so it is an ordinary tensor that a loss may use.
    """
    batch_size = min(batch_size or data.compute.eval_batch_size(data.image_numel), max(len(images), 1))
    was_training = model.training
    model.eval()
    with torch.inference_mode(), data.compute.autocast():
        out = [
            model(data.normalize(_padded(x, batch_size))).float()[: len(x)]
            for x in data.eval_batches(images, batch_size)
        ]
    model.train(was_training)
    return data.shard.gather(torch.cat(out), len(images))


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with copies of its last row appended up to `size` rows."""
    if len(x) >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


def train_epoch(
    model: torch.nn.Module,
    data: SplitData,
    *,
    batch_size: int,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: LossFn,
    position: EpochPosition | None = None,
    stop: Callable[[], object] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    on_batch: Callable[[int, torch.Tensor], object] | None = None,
) -> float | None:
    """One pass over the training split; returns the mean training loss (weighted by batch size).

    The forward pass runs in the data's precision (the loss in float32); `scaler` is the stage's fp16
    loss scaler (None: no scaling). Across processes each takes its part of every batch and the loss is
    averaged over all of them.

    With the data's training augmentation set, every batch is augmented on the device before it is
    normalised (the random choices come from `generator`). With a `position`, the epoch continues from
    it (same shuffling and augmentation draws; the batches it counts as done are skipped) and it advances
    with every batch. When `stop()` turns true, the pass returns None at the next batch boundary, leaving
    `position` where it stopped. `on_batch(images, loss)` follows each batch (a progress bar).
    """
    scaler = scaler or torch.amp.GradScaler(data.device.type, enabled=False)
    model.train()
    position = position or EpochPosition.start(0, optimizer, generator)
    parts = _batches_left(data, batch_size, generator, position)
    loaded = data.load_batches([batch[rows] for batch, rows in parts])
    for (batch, rows), (images, y) in zip(parts, loaded):
        if stop is not None and stop():
            return None
        idx = batch[rows]
        if data.augmentation is not None:  # drawn for the whole batch, so every process gets its own draws
            images = data.augmentation(images, generator, rows, len(batch))
        x = data.normalize(images)
        with data.compute.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), idx, y, x)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        position.count_batch(loss.detach() * len(idx), len(idx), generator if data.augmentation else None)
        if on_batch is not None:
            on_batch(len(idx), loss.detach())
    return data.shard.mean(position.loss_sum, position.samples)


def _batches_left(data: SplitData, batch_size: int, generator: torch.Generator, position: EpochPosition) -> list:
    """(index batch, this process's rows of it) for the batches of the epoch that `position` has not done.

    Replays the epoch's shuffle from the generator state it started with; across processes each takes its
    rows of every batch, and a last batch too small to split is dropped.
    """
    generator.set_state(position.generator_state)
    batches = list(index_batches(len(data.train), batch_size, generator, data.device))  # draws the shuffle
    if position.draw_state is not None:
        generator.set_state(position.draw_state)  # augmentation draws continue where the pass stopped
    position.loss_sum = position.loss_sum.to(data.device)
    parts = [(batch, data.shard.rows(len(batch))) for batch in batches[position.batches :]]
    return [(batch, rows) for batch, rows in parts if rows is not None]


def check_steps(n: int, recipe: StageConfig, shard, stage: str) -> None:
    """Refuse a stage that would train without a single optimizer step: its first batch (min(n, batch size)
    of the n training samples) must give every process 2 samples (`_batches_left` drops it otherwise)."""
    first = min(n, recipe.batch_size)
    if recipe.epochs > 0 and (first < 2 or shard.rows(first) is None):
        raise UserError(
            f"{stage}.batch_size={recipe.batch_size} is not allowed with {n} training samples and {shard.world} "
            f"process(es): the {stage} stage would take no optimizer step (each process needs 2 samples of a batch)"
        )


def cross_entropy_loss(
    logits: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def fit(
    model: torch.nn.Module,
    data: SplitData,
    *,
    stage: str,
    recipe: StageConfig,
    seed: int,
    loss_fn: LossFn,
    validate: Callable[[], dict],
    progress: bool,
    checkpoint: StageCheckpoint | None = None,
    stop: Callable[[], object] | None = None,
    on_epoch: Callable[[list[dict]], object] | None = None,
    temperature: float | None = None,
    on_epoch_start: Callable[[int], object] | None = None,
    checkpoint_every_s: float = 0.0,
    on_save: Callable[[], object] | None = None,
    weights: dict[str, tuple[float, float]] | None = None,
    objective: str | None = None,
) -> list[dict]:
    """Train the `stage` ("teacher" or "student") for `recipe.epochs` epochs, `validate()` after each; one
    row per epoch (epoch, lr, mean training loss, metrics). With a `checkpoint`, continue from it and save
    after an epoch when `checkpoint_every_s` have passed since the last save (0: every epoch); when `stop()`
    turns true, save at the next batch boundary and raise RunInterrupted.
    A NaN or infinite loss or metric raises Diverged (the last checkpoint stays the last good epoch). Each
    epoch is logged in one line, then `on_epoch(rows so far)` records it; `progress`: a per-batch bar.
    `temperature` (the student's soft targets), `weights` (the method's, {key: (value, default)}) and
    `objective` (the user's, its `_target_`) are named in a divergence hint when they are the likely cause;
    `on_epoch_start(epoch)` tells the loss which epoch it trains (a warm-up), also after a resume;
    `on_save()` runs right before each checkpoint is written (what must be on disk before it: the best student)."""
    run = StageRun.start(model, data, recipe, seed, checkpoint)
    epoch_log = EpochLog(stage, recipe.epochs)
    while run.position.epoch <= recipe.epochs:
        if on_epoch_start is not None:
            on_epoch_start(run.position.epoch)
        epoch_log.start()
        bar = BatchBar(stage, run.position.epoch, recipe.epochs, len(data.train), progress)
        train_loss = train_epoch(
            model,
            data,
            batch_size=recipe.batch_size,
            generator=run.generator,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            loss_fn=loss_fn,
            position=run.position,
            stop=stop,
            scaler=run.scaler,
            on_batch=bar.update,
        )
        bar.close()
        if train_loss is None:
            run.save(model, checkpoint, on_save)
            raise RunInterrupted(stage, run.position.epoch, run.position.batches)
        row = {"epoch": run.position.epoch, "lr": run.position.lr, "train_loss": train_loss, **validate()}
        check_finite(row, stage, recipe, data.compute.precision, temperature, weights, objective)
        run.rows.append(row)
        epoch_log.done(row)
        if on_epoch is not None:
            on_epoch(run.rows)
        run.position = EpochPosition.start(run.position.epoch + 1, run.optimizer, run.generator)
        if time.monotonic() - run.saved_at >= checkpoint_every_s:
            run.save(model, checkpoint, on_save)
    return run.rows


@dataclass
class StageRun:
    """What a stage carries from batch to batch and epoch to epoch, and saves in its checkpoint."""

    generator: torch.Generator  # shuffling and augmentation draws
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler  # fp16 loss scaling (a pass-through otherwise)
    position: EpochPosition
    rows: list[dict]  # one per finished epoch
    saved_at: float = field(default_factory=time.monotonic)  # when the checkpoint was last written (or the start)

    @classmethod
    def start(cls, model, data: SplitData, recipe: StageConfig, seed: int, checkpoint: StageCheckpoint | None):
        """A fresh stage, or the one `checkpoint` saved (same shuffles, same optimizer state)."""
        generator = torch.Generator().manual_seed(seed)
        optimizer = make_optimizer(model.parameters(), recipe)
        scheduler = make_scheduler(optimizer, recipe, steps_per_epoch(len(data.train), recipe.batch_size))
        scaler = data.compute.grad_scaler()
        position, rows = EpochPosition.start(1, optimizer, generator), []
        if checkpoint is not None:
            position, rows = checkpoint.restore(model, optimizer, scheduler, data.device, scaler) or (position, rows)
        return cls(generator, optimizer, scheduler, scaler, position, rows)

    def save(self, model, checkpoint: StageCheckpoint | None, before: Callable[[], object] | None = None) -> None:
        """The stage's checkpoint (none without `checkpoint`), after `before()`."""
        if checkpoint is not None:
            if before is not None:
                before()
            checkpoint.save(model, self.optimizer, self.scheduler, self.position, self.rows, self.scaler)
        self.saved_at = time.monotonic()


def check_finite(
    row: dict,
    stage: str,
    recipe: StageConfig,
    precision: str = "fp32",
    temperature: float | None = None,
    weights: dict[str, tuple[float, float]] | None = None,
    objective: str | None = None,
) -> None:
    """Raise Diverged when the training loss or a validation metric of an epoch is NaN or infinite."""
    bad = [f"{k}={v}" for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise Diverged(
            stage,
            row["epoch"],
            f"the {stage} stage diverged in epoch {row['epoch']} ({', '.join(bad)}): "
            + divergence_hint(stage, recipe, precision, temperature, weights, objective),
        )


def divergence_hint(
    stage: str,
    recipe: StageConfig,
    precision: str,
    temperature: float | None,
    weights: dict[str, tuple[float, float]] | None = None,
    objective: str | None = None,
) -> str:
    """The likely cause of a divergence: the first setting outside its usual range (a method weight far above
    its default), the user's objective, else the usual advice."""
    usual_lr = USUAL_LR.get(recipe.optimizer, 1.0) if isinstance(recipe.optimizer, str) else 1.0  # a node: unknown
    if recipe.lr > usual_lr:
        return (
            f"lower the learning rate ({stage}.lr={recipe.lr}): it is large for {stage}.optimizer={recipe.optimizer} "
            f"(usually at most {usual_lr:g})"
        )
    for key, (value, default) in (weights or {}).items():
        if value > USUAL_WEIGHT_FACTOR * max(default, 1.0):
            return (
                f"lower {key}={value:g}: the method's loss term it weighs is far above its default weight {default:g}"
            )
    if temperature is not None and temperature > USUAL_TEMPERATURE:
        return (
            f"lower the temperature (temperature={temperature:g}): above the usual 1 to {USUAL_TEMPERATURE:g}, the "
            "soft term's T^2 scaling makes its gradients large; or lower the learning rate"
        )
    if precision == "fp16":
        return f"precision=fp16 can overflow: use precision=bf16 or fp32, or lower the learning rate ({stage}.lr)"
    if objective is not None:
        return (
            f"check the objective distill.objective._target_={objective}: it may give a non-finite loss (a log "
            f"or a division by 0); or lower the learning rate ({stage}.lr={recipe.lr})"
        )
    return f"lower the learning rate ({stage}.lr={recipe.lr}) or check the data"
