"""One run across several processes (GPUs) with PyTorch's DistributedDataParallel under `torchrun`.

    torchrun --standalone --nproc-per-node=2 --no-python kd-run teacher=resnet50 student=resnet18

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into one
process group (NCCL on CUDA, gloo on CPU) and gives each process its `Shard`:

- every process draws the same shuffled index batches; each takes an equal part (its rows) of every
  batch, so the batch the optimiser sees and the steps per epoch are those of a single-process run.
  DDP averages the gradients of the equal parts: the gradient of the batch without the rows that do
  not split evenly. (A last batch too small to give every process 2 samples is dropped; BatchNorm
  statistics are per process during training, rank 0's are given to all before evaluating.)
- evaluation splits the validation set across the processes and gathers the logits, so every process
  computes the same metrics on the whole split; the training loss is reduced the same way.
- the teacher is fine-tuned (or loaded) and its logits computed by rank 0 alone, under the caches'
  locks; the other processes wait, then load them from the caches (so `cache_dir` must be shared).
- only rank 0 writes files: the CLI runs Hydra (run directories, logs) on rank 0 only.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kd_runner.errors import ConfigError
from kd_runner.runtime.process import launched_world_size

T = TypeVar("T")
# Rank 0 may fine-tune a teacher while the others wait in a barrier: allow that to take long.
WAIT_FOR_RANK0 = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: rank `rank` of `world` processes. The default is a single process."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where this process's collectives put their tensors (NCCL: its GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice | None:
        """This process's equal part of a batch of n rows; None when it would hold fewer than 2 samples."""
        if self.world == 1:
            return slice(0, n)
        part = n // self.world
        return slice(self.rank * part, (self.rank + 1) * part) if part >= 2 else None

    def eval_indices(self, n: int) -> torch.Tensor:
        """The indices this process evaluates: an equal share of 0..n-1, the last padded by repeating n-1."""
        if self.world == 1:
            return torch.arange(n)
        size = -(-n // self.world)
        return torch.arange(self.rank * size, (self.rank + 1) * size).clamp_max(n - 1)

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of all processes' `eval_indices` results, in order: the result for all n samples."""
        if self.world == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)[:n]

    def mean(self, total: torch.Tensor, count: int) -> float:
        """The mean over all processes of values whose local sum is `total` over `count` samples."""
        if self.world == 1:
            return float(total) / max(count, 1)
        both = torch.stack(
            [total.detach().double(), torch.tensor(float(count), dtype=torch.float64, device=total.device)]
        )
        dist.all_reduce(both)
        return float(both[0]) / max(float(both[1]), 1.0)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agreed(self, stop: Callable[[], object]) -> Callable[[], bool]:
        """`stop` asked of every process at once: true on all as soon as it is true on one, so all of
        them leave the training loop at the same batch (a signal may reach them at different times)."""
        if self.world == 1:
            return stop

        def any_stop() -> bool:
            flag = torch.tensor([1.0 if stop() else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())

        return any_stop

    def check_batch_size(self, batch_size: int, key: str) -> None:
        """Every process needs at least 2 samples of each batch (BatchNorm)."""
        if batch_size < 2 * self.world:
            raise ConfigError(key, batch_size, f"at least {2 * self.world} with {self.world} processes (2 per process)")

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then on the others (which then find what rank 0 cached). When it fails on
        rank 0, the others raise MainFailed instead of waiting for it."""
        if self.world == 1:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException:
                self.broadcast(False)
                raise
            self.broadcast(True)
            return result
        if not self.broadcast(None):
            raise MainFailed("rank 0 failed this step of the run; it records why")
        return fn()

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics, which each process updated on its
        own rows), so all evaluate the same model, the one rank 0 saves."""
        if self.world == 1:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` for training: wrapped in DistributedDataParallel when there are several processes."""
        if self.world == 1:
            return model
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def setup(device: torch.device) -> tuple[Shard, torch.device]:
    """This process's shard and device; under torchrun, joins the process group (once per process).

    On CUDA each process uses the GPU of its LOCAL_RANK.
    """
    world = launched_world_size()
    if world == 1:
        return Shard(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT_FOR_RANK0)
    return Shard(dist.get_rank(), dist.get_world_size(), device), device


class MainFailed(RuntimeError):
    """Raised on the other processes when a step that rank 0 runs first failed there."""
