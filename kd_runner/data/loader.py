"""The DataLoader path (`loader=dataloader`): batches streamed by worker processes, for data too big for the device.

The in-memory path (`kd_runner.data.splits.InMemoryData`) keeps whole splits on the device and batches by index. This
path leaves the images where they are and lets torch DataLoaders fetch each batch: `num_workers` worker
processes (kept alive across epochs), pinned host memory and non-blocking copies to a GPU. A split's
`images` is any map-style dataset (`images[i]` is image i as a C x H x W tensor, uint8 or float in [0, 1]),
e.g. a tensor or files read on demand; labels are kept on the device (they are small, and the metrics
need them).

The training batches are the very index batches the in-memory path draws from the same generator, and
normalisation happens on the device the same way, so both paths compute the same thing on the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from kd_runner.data import Dataset
from kd_runner.data.splits import Normalize
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.distributed import Shard


@dataclass
class StreamedSplit:
    images: object  # a tensor or any map-style dataset, read on demand by the DataLoaders' workers
    labels: torch.Tensor  # N, int64, on the device

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class ListedBatches(Sampler):
    """The index batches of the current epoch, set by `StreamedData.load_batches` before each pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamedData:
    """A dataset seen through DataLoaders: images stay where they are (a tensor, or files read on demand),
    labels live on the device. Implements kd_runner.data.splits.SplitData."""

    def __init__(self, data: Dataset, compute: Compute, num_workers: int):
        self.device, self.compute, self.source, self.shard = compute.device, compute, data, Shard()
        self.num_workers = num_workers
        self.train = StreamedSplit(data.train.images, data.train.labels.to(self.device))
        self.val = StreamedSplit(data.val.images, data.val.labels.to(self.device))
        self.image_numel = int(data.train.images[0].numel())
        self.normalize = Normalize(data, compute)
        self.augmentation = data.augmentation
        self._sampler = ListedBatches()
        self._loaders: dict = {}  # kept for the run: persistent workers live as long as their loader

    def like(self, data: Dataset) -> StreamedData:
        return StreamedData(data, self.compute, self.num_workers)

    def _loader(self, key: tuple, dataset, **kwargs) -> DataLoader:
        if key not in self._loaders:
            workers = self.num_workers
            self._loaders[key] = DataLoader(
                dataset,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                generator=torch.Generator(),  # the workers' seeds come from here, not from the global generator
                **kwargs,
            )
        return self._loaders[key]

    def load_batches(self, batches: list[torch.Tensor]):
        """(raw images, labels) of each index batch of the training split, fetched by the workers, in order."""
        self._sampler.batches = [idx.tolist() for idx in batches]
        loader = self._loader(("train",), self.train.images, batch_sampler=self._sampler)
        for idx, images in zip(batches, loader):
            yield images.to(self.device, non_blocking=True), self.train.labels[idx]

    def eval_batches(self, images, batch_size: int):
        """This process's share of a split's `images`, in order, in batches of `batch_size`."""
        subset = Subset(images, self.shard.eval_indices(len(images)).tolist())
        for batch in self._loader(("eval", id(images), batch_size, self.shard), subset, batch_size=batch_size):
            yield batch.to(self.device, non_blocking=True)
