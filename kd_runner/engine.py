"""Training and evaluation on in-memory splits: batches are index tensors into data already on the device.

One loop serves both stages: the caller passes the loss as a function of (logits, batch indices,
labels, inputs), so the teacher stage uses plain cross-entropy and the student stage the distillation
objective. `inputs` is the normalised (and, with augmentation, augmented) batch the model saw, so a
teacher can be run on exactly that batch.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kd_runner.checkpoint import EpochPosition, StageCheckpoint
from kd_runner.compute import Compute
from kd_runner.config import StageConfig
from kd_runner.data import Dataset, Split
from kd_runner.distributed import Shard
from kd_runner.errors import Diverged, RunInterrupted, UserError
from kd_runner.models import build_model, freeze_backbone


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UserError(f"device={name!r} is not available on this machine: use device=auto or device=cpu")
    return torch.device(name)


def build_stage_model(stage: StageConfig, data: Dataset) -> torch.nn.Module:
    """The stage's network, shaped for the dataset, with the backbone frozen when `freeze=backbone`."""
    model = build_model(
        stage.name, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
        width=stage.width, depth=stage.depth, pretrained=stage.pretrained, weights_path=stage.weights_path,
    )
    if stage.freeze == "backbone":
        freeze_backbone(model)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DeviceData:
    """A dataset's splits moved to the device once, with normalisation (and training augmentation) per batch.

    It also says how this process computes on them: `compute` (precision, memory format, compile) and
    `shard` (its part of every batch when a run spans several processes; see kd_runner.distributed).
    kd_runner.loader.LoaderData is the same interface over DataLoaders, for data that does not fit.
    """

    def __init__(self, data: Dataset, device: torch.device, compute: Compute | None = None):
        self.device = device
        self.compute = compute or Compute(device)
        if self.compute.device != device:
            raise ValueError(f"compute settings for {self.compute.device} used with data on {device}")
        self.source = data  # what the splits hold, for kd_runner.logits_cache's data digest
        self.shard = Shard()
        self.image_numel = int(data.train.images[0].numel())
        self.train = self.place(data.train)
        self.val = self.place(data.val)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.augmentation = data.augmentation

    def place(self, split: Split):
        """The split as this class keeps it: here, images (row-major) and labels on the device."""
        return Split(row_major(split.images.to(self.device)), split.labels.to(self.device))

    def like(self, data: Dataset) -> "DeviceData":
        """Another dataset (a transfer set) placed the same way, with the same compute settings."""
        return DeviceData(data, self.device, self.compute)

    def sharded(self, shard: Shard) -> "DeviceData":
        """The same data (no copy) seen by one process of a multi-process run."""
        view = copy.copy(self)
        view.shard = shard
        return view

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return self.compute.format_batch((x - self.mean) / self.std)

    def load_batches(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(raw images, labels) of each index batch of the training split, in order."""
        for idx in batches:
            yield self.train.images[idx], self.train.labels[idx]

    def eval_batches(self, images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """This process's share of `images` (raw, on the device), in order, in batches of `batch_size`."""
        if self.shard.world == 1:
            yield from images.split(batch_size)
            return
        for idx in self.shard.eval_indices(len(images)).to(self.device).split(batch_size):
            yield images[idx]


def row_major(t: torch.Tensor) -> torch.Tensor:
    """`t` with plain row-major strides. A size-1 dimension's stride is free (N x 1 x H x W images made
    with numpy's newaxis look channels-last too), and convolutions pick their kernels, hence their
    rounding, from the strides: every path must feed the same layout to compute the same numbers."""
    standard = torch.empty(t.shape, device="meta").stride()
    return t if t.stride() == standard else t.clone(memory_format=torch.contiguous_format)


def index_batches(n: int, batch_size: int, generator: torch.Generator, device) -> Iterator[torch.Tensor]:
    """Shuffled index batches over n samples; a last batch of one sample is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


def predict(model: torch.nn.Module, data: DeviceData, images, batch_size: int | None = None) -> torch.Tensor:
    """Logits (float32) for all `images` (a split's `images` of `data`), in eval mode, large batches
    (`Compute.eval_batch_size` by default), inference mode and the data's precision; across processes
    each computes a share and all get all.

    The result is concatenated outside inference mode, so it is an ordinary tensor that a loss may use.
    """
    batch_size = batch_size or data.compute.eval_batch_size(data.image_numel)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), data.compute.autocast():
        out = [model(data.normalize(x)).float() for x in data.eval_batches(images, batch_size)]
    model.train(was_training)
    return data.shard.gather(torch.cat(out), len(images))


def make_optimizer(params, stage: StageConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    raise ValueError(f"unknown optimizer {stage.optimizer}")


def make_scheduler(optimizer, stage: StageConfig, steps_per_epoch: int):
    """Stepped once per batch; `step` decays every `step_size` epochs, exactly as the per-epoch StepLR."""
    total = max(1, stage.epochs * steps_per_epoch)
    if stage.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if stage.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, stage.step_size * steps_per_epoch, stage.gamma)
    if stage.scheduler == "multistep":
        milestones = [m * steps_per_epoch for m in stage.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, stage.gamma)
    if stage.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    if stage.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=stage.lr, total_steps=total)
    raise ValueError(f"unknown scheduler {stage.scheduler}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and n == 1) else 0)


def train_epoch(
    model: torch.nn.Module,
    data: DeviceData,
    batch_size: int,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    position: EpochPosition | None = None,
    stop: Callable[[], object] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> float | None:
    """One pass over the training split; returns the mean training loss (weighted by batch size).

    The forward pass runs in the data's precision (the loss in float32); `scaler` is the stage's fp16
    loss scaler (None: no scaling). Across processes each takes its part of every batch and the loss is
    averaged over all of them.

    With the data's training augmentation set, every batch is augmented on the device before it is
    normalised (the random choices come from `generator`). With a `position`, the epoch continues from
    it (same shuffling and augmentation draws; the batches it counts as done are skipped) and it advances
    with every batch. When `stop()` turns true, the pass returns None at the next batch boundary, leaving
    `position` where it stopped.
    """
    scaler = scaler or torch.amp.GradScaler(data.device.type, enabled=False)
    model.train()
    position = position or EpochPosition.start(0, optimizer, generator)
    generator.set_state(position.generator_state)
    batches = list(index_batches(len(data.train), batch_size, generator, data.device))  # draws the shuffle
    if position.draw_state is not None:
        generator.set_state(position.draw_state)  # augmentation draws continue where the pass stopped
    total, count = position.loss_sum.to(data.device), position.samples
    # across processes each takes its rows of every batch; a last batch too small to split is dropped
    parts = [(batch, data.shard.rows(len(batch))) for batch in batches[position.batches:]]
    parts = [(batch, rows) for batch, rows in parts if rows is not None]
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
        total += loss.detach() * len(idx)
        count += len(idx)
        position.batches, position.loss_sum, position.samples = position.batches + 1, total, count
        position.draw_state = generator.get_state() if data.augmentation is not None else None
    return data.shard.mean(total, count)


def cross_entropy_loss(
    logits: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def fit(
    model: torch.nn.Module,
    data: DeviceData,
    stage: StageConfig,
    seed: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[], dict],
    desc: str,
    progress: bool,
    checkpoint: StageCheckpoint | None = None,
    stop: Callable[[], object] | None = None,
) -> list[dict]:
    """Train for `stage.epochs` epochs; after each, `evaluate()` on the whole validation split.

    Returns one row per epoch: epoch, the learning rate used, the mean training loss and the metrics.
    With a `checkpoint`, the stage first continues from the one saved before (if any), then saves one
    after every epoch; when `stop()` turns true it saves one at the next batch boundary and raises
    RunInterrupted. A NaN or infinite loss or metric raises Diverged (the last checkpoint stays the last
    good epoch).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model.parameters(), stage)
    scheduler = make_scheduler(optimizer, stage, steps_per_epoch(len(data.train), stage.batch_size))
    scaler = data.compute.grad_scaler()
    position, rows = EpochPosition.start(1, optimizer, generator), []
    if checkpoint is not None:
        position, rows = checkpoint.restore(model, optimizer, scheduler, data.device, scaler) or (position, rows)
    bar = tqdm(total=stage.epochs, initial=position.epoch - 1, desc=desc, unit="epoch",
               disable=None if progress else True, leave=False)
    while position.epoch <= stage.epochs:
        train_loss = train_epoch(
            model, data, stage.batch_size, generator, optimizer, scheduler, loss_fn, position, stop, scaler
        )
        if train_loss is None:
            if checkpoint is not None:
                checkpoint.save(model, optimizer, scheduler, position, rows, scaler)
            raise RunInterrupted(desc, position.epoch, position.batches)
        row = {"epoch": position.epoch, "lr": position.lr, "train_loss": train_loss, **evaluate()}
        check_finite(row, desc, stage)
        rows.append(row)
        position = EpochPosition.start(position.epoch + 1, optimizer, generator)
        if checkpoint is not None:
            checkpoint.save(model, optimizer, scheduler, position, rows, scaler)
        bar.update()
        bar.set_postfix(loss=f"{train_loss:.3f}")
    bar.close()
    return rows


def check_finite(row: dict, desc: str, stage: StageConfig) -> None:
    """Raise Diverged when the training loss or a validation metric of an epoch is NaN or infinite."""
    bad = [f"{k}={v}" for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise Diverged(
            desc, row["epoch"],
            f"the {desc} stage diverged in epoch {row['epoch']} ({', '.join(bad)}): "
            f"lower the learning rate ({desc}.lr={stage.lr}) or check the data",
        )
