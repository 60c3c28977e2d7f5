"""A dataset's splits as training and evaluation see them, behind one small protocol (`SplitData`).

Two implementations: `InMemoryData` (here) moves whole splits to the device once and batches by index
with no per-sample Python; `kd_runner.data.loader.StreamedData` leaves the images where they are and
streams batches through DataLoader workers, for data too big for the device. Both normalise on the
device the same way and take the very same index batches, so they compute the same thing on a seed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Protocol, TypeVar

import torch

from kd_runner.data import Dataset, Split
from kd_runner.data.augment import Augmentation
from kd_runner.data.normalize import normalized
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.distributed import Shard

D = TypeVar("D")


class SplitData(Protocol):
    """What the training loop, `predict`, the teacher stage and the soft targets need from the data."""

    device: torch.device
    compute: Compute  # how this process computes: precision, memory format, compile
    shard: Shard  # this process's part of every batch when a run spans several processes
    source: Dataset  # what the splits hold, for kd_runner.teacher.logits_cache's data digest
    train: Split
    val: Split
    augmentation: Augmentation | None
    image_numel: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...

    def load_batches(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def eval_batches(self, images, batch_size: int) -> Iterator[torch.Tensor]: ...

    def like(self, data: Dataset) -> SplitData: ...


class Normalize:
    """The dataset's per-channel normalisation, on the device, into the networks' memory format."""

    def __init__(self, data: Dataset, compute: Compute):
        self.compute = compute
        self.mean = torch.tensor(data.mean, device=compute.device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=compute.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.compute.format_batch(normalized(images, self.mean, self.std))


def sharded(data: D, shard: Shard) -> D:
    """The same data (no copy) seen by one process of a multi-process run."""
    view = copy.copy(data)
    view.shard = shard
    return view


class InMemoryData:
    """A dataset's splits moved to the device once: images (row-major) and labels."""

    def __init__(self, data: Dataset, compute: Compute):
        self.device, self.compute, self.source, self.shard = compute.device, compute, data, Shard()
        self.train = Split(row_major(data.train.images.to(self.device)), data.train.labels.to(self.device))
        self.val = Split(row_major(data.val.images.to(self.device)), data.val.labels.to(self.device))
        self.image_numel = int(data.train.images[0].numel())
        self.normalize = Normalize(data, compute)
        self.augmentation = data.augmentation

    def like(self, data: Dataset) -> InMemoryData:
        """Another dataset (a transfer set) placed the same way, with the same compute settings."""
        return InMemoryData(data, self.compute)

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


def steps_per_epoch(n: int, batch_size: int) -> int:
    """The number of batches `index_batches` yields for n samples."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and n == 1) else 0)
