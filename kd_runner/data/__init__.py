"""Dataset registry: every dataset name maps to a builder that returns in-memory train/val splits.

A builder takes the typed dataset config and returns a `Dataset`: image tensors (uint8 in [0, 255] or
float32 in [0, 1], shape N x C x H x W) plus int64 labels, and the per-channel mean/std used to
normalise batches on the device. Keeping whole splits as tensors is what lets the engine batch by index
with no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kd_runner.data.augment import Augmentation
from kd_runner.errors import ConfigError


@dataclass
class Split:
    images: torch.Tensor  # N x C x H x W, uint8 [0, 255] or float32 [0, 1]
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
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

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


BUILDERS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        BUILDERS[name] = fn
        return fn

    return wrap


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(BUILDERS))


def build_dataset(cfg) -> Dataset:
    """Build the dataset named by `cfg.name` (a `kd_runner.config.DatasetConfig`)."""
    if cfg.name not in BUILDERS:
        raise ConfigError("dataset.name", cfg.name, "one of: " + ", ".join(dataset_names()))
    data = BUILDERS[cfg.name](cfg)
    check_dataset(data, cfg)
    return data


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a split, in [0, 1] units, for normalisation."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


from kd_runner.data import builtin  # noqa: E402,F401  (registers digits and synthetic)
from kd_runner.data.checks import check_dataset  # noqa: E402
from kd_runner.data.vision import DOWNLOADABLE, WITH_TEST_SPLIT  # noqa: E402,F401  (registers the file datasets)
