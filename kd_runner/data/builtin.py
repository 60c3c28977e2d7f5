"""The two datasets that need no files: scikit-learn's handwritten digits and a generated set."""

from __future__ import annotations

import math

import numpy as np
import torch

from kd_runner.data import Dataset, Split, channel_stats
from kd_runner.errors import ConfigError


def build_digits(cfg) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (bundled, offline; 16 grey levels), a stratified
    holdout split (val_fraction) fixed by `split_seed`."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes over a second to import
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8 in [0, 1]
    labels = bunch.target.astype(np.int64)
    n_val = math.ceil(cfg.val_fraction * len(labels))  # as train_test_split rounds it
    if not 10 <= n_val <= len(labels) - 10:  # a stratified split needs every class on both sides
        lo, hi = 10 / len(labels), 1 - 10 / len(labels)
        raise ConfigError(
            "dataset.val_fraction",
            cfg.val_fraction,
            f"expected a share in [{lo:.4f}, {hi:.4f}]: each split of digits needs a sample of every class",
        )
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=cfg.val_fraction, stratify=labels, random_state=cfg.split_seed
    )
    train = Split(torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train]))
    val = Split(torch.from_numpy(images[idx_val]), torch.from_numpy(labels[idx_val]))
    mean, std = channel_stats(train.images)
    return Dataset("digits", train, val, 10, mean, std)


def build_synthetic(cfg) -> Dataset:
    """Generated images (noisy copies of one random prototype per class) for tests and benchmarks: learnable,
    of the shape dataset.num_samples, image_size, channels and num_classes set."""
    n_val = max(1, int(round(cfg.num_samples * cfg.val_fraction)))
    if n_val >= cfg.num_samples:
        raise ConfigError(
            "dataset.val_fraction",
            cfg.val_fraction,
            f"expected a share that leaves training samples of dataset.num_samples={cfg.num_samples}",
        )
    gen = torch.Generator().manual_seed(cfg.split_seed)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    prototypes = torch.rand((cfg.num_classes, *shape), generator=gen)
    labels = torch.arange(cfg.num_samples) % cfg.num_classes
    labels = labels[torch.randperm(cfg.num_samples, generator=gen)]
    noise = torch.rand((cfg.num_samples, *shape), generator=gen)
    images = (0.5 * prototypes[labels] + 0.5 * noise).clamp(0, 1)
    images = (images * 255).round().to(torch.uint8)
    train = Split(images[n_val:], labels[n_val:])
    val = Split(images[:n_val], labels[:n_val])
    mean, std = channel_stats(train.images)
    return Dataset("synthetic", train, val, cfg.num_classes, mean, std)
