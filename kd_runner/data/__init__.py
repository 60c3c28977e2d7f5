"""Dataset registry: every dataset name maps to a builder that returns in-memory train/val splits.

``kd_runner.names.DATASETS`` names each builder by its "module:function" path, imported when that dataset
is built. A builder takes the typed dataset config and returns a `Dataset`: image tensors (uint8 in [0, 255] or
float32 in [0, 1], shape N x C x H x W) plus int64 labels, and the per-channel mean/std used to
normalise batches on the device. Keeping whole splits as tensors is what lets the engine batch by index
with no per-sample Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pkgutil import resolve_name

import torch

from kd_runner.data.augment import Augmentation, augmentation_preset
from kd_runner.data.normalize import normalized, unit_range
from kd_runner.errors import ConfigError
from kd_runner.names import DATASET_NAMES, DATASETS
from kd_runner.store.files import tensors_digest


@dataclass
class Split:
    images: torch.Tensor  # N x C x H x W, uint8 [0, 255] or float32 [0, 1] (streamed: a map-style dataset of them)
    labels: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation | None = None  # training augmentation, applied per batch on the device

    @property
    def in_channels(self) -> int:
        return int(self.train.images[0].shape[0])

    @property
    def image_size(self) -> int:
        return int(self.train.images[0].shape[-1])

    @property
    def streamed(self) -> bool:
        """The images are read on demand (a large dataset.factory dataset): only the DataLoader path serves them."""
        return not isinstance(self.train.images, torch.Tensor)

    @cached_property
    def content_digest(self) -> str:
        """Digest of what a network is fed: the images and labels of both splits and the normalisation (set
        before any use). Streamed images count by the digest of their content read when the split was built.
        Computed once per Dataset object: the jobs of a sweep that share the dataset hash it once."""
        splits = (self.train.images, self.train.labels, self.val.images, self.val.labels)
        tensors = [t for t in splits if isinstance(t, torch.Tensor)]
        streamed = [t.digest for t in splits if not isinstance(t, torch.Tensor)]
        return tensors_digest(tensors, {"mean": self.mean, "std": self.std, "streamed": streamed})

    def sample_batch(self, n: int = 2) -> torch.Tensor:
        """The first `n` training images, normalised as the networks see them (for a shape check)."""
        images = torch.stack([self.train.images[i] for i in range(min(n, len(self.train)))])
        return normalized(images, torch.tensor(self.mean).view(1, -1, 1, 1), torch.tensor(self.std).view(1, -1, 1, 1))

    def describe(self) -> dict:
        """Its shape and normalisation as plain values: enough to rebuild and feed a model trained on it."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def build_dataset(cfg) -> Dataset:
    """Build the dataset named by `cfg.name` or the user's by `cfg.factory` (a `kd_runner.config.DatasetConfig`),
    with the augmentation preset and normalisation statistics `cfg` sets."""
    if cfg.factory["_target_"] is not None:
        data = build_custom(cfg)
    elif cfg.name in DATASETS:
        data = resolve_name(DATASETS[cfg.name])(cfg)
    else:
        raise ConfigError("dataset.name", cfg.name, "one of: " + ", ".join(DATASET_NAMES))
    if isinstance(cfg.augment, str) or not cfg.augment:  # a preset by name (true: the dataset's own)
        data.augmentation = augmentation_preset(cfg.augment, data.image_size)
    if cfg.mean:
        if len(cfg.mean) != data.in_channels:
            raise ConfigError("dataset.mean", cfg.mean, f"{data.in_channels} values, one per channel of {data.name}")
        data.mean, data.std = tuple(cfg.mean), tuple(cfg.std)
    check_dataset(data, cfg)
    return data


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a split, in [0, 1] units, for normalisation."""
    x = unit_range(images)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


from kd_runner.data.checks import check_dataset  # noqa: E402
from kd_runner.data.custom import build_custom  # noqa: E402
