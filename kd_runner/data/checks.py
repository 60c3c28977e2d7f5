"""Checks every built dataset passes before a run uses it, whatever builder made it.

A run needs samples to learn from, samples to measure on, at least two classes to tell apart, images of
one shape in both splits, and logits it can hold; a dataset without them is a user error reported in one
line, not a crash, a silent NaN or an exhausted memory later.
"""

from __future__ import annotations

import torch

from kd_runner.errors import UserError


def check_dataset(data, cfg) -> None:
    """Raise UserError when `data` (a Dataset built from `cfg`, its DatasetConfig) cannot make a run."""
    for split_name, split in (("training", data.train), ("validation", data.val)):
        if len(split) == 0:
            raise UserError(
                f"dataset {data.name}: the {split_name} split has 0 samples (dataset.val_fraction={cfg.val_fraction}): "
                "each split needs at least one sample"
            )
    present = int(data.train.labels.unique().numel())
    if data.num_classes < 2 or present < 2:
        raise UserError(
            f"dataset {data.name}: the training split holds a single class (training samples: {len(data.train)}, "
            f"classes declared: {data.num_classes}): classification needs at least 2 classes"
        )
    _check_shapes(data)
    _check_finite(data)
    _check_class_count(data, cfg)


def _check_shapes(data) -> None:
    """The networks are built for the training images' shape: validation images of another one fail in them."""
    train, val = (tuple(split.images[0].shape) for split in (data.train, data.val))
    if train != val:
        raise UserError(
            f"dataset {data.name}: the training images are C x H x W = {train}, the validation images {val}: "
            "both splits need images of one shape (channels and size)"
        )


def _check_finite(data) -> None:
    """NaN or infinite pixels make every loss non-finite: the run would diverge with a misleading hint."""
    for split_name, split in (("training", data.train), ("validation", data.val)):
        images = split.images
        if isinstance(images, torch.Tensor) and images.is_floating_point() and not torch.isfinite(images).all():
            first = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
            raise UserError(
                f"dataset {data.name}: the {split_name} images hold NaN or infinite values (first: image {first}): "
                "every pixel must be a finite number"
            )


def _check_class_count(data, cfg) -> None:
    """A class count far beyond the labels (a typo, a label read as a count) would fill the memory with the
    logits of classes no image has: refused when those logits outgrow dataset.memory_mb."""
    used = int(max(data.train.labels.max(), data.val.labels.max())) + 1
    logits_mb = (len(data.train) + len(data.val)) * data.num_classes * 4 / 2**20  # float32 logits of every image
    if data.num_classes > used and logits_mb > cfg.memory_mb:
        raise UserError(
            f"dataset {data.name}: num_classes={data.num_classes} while its labels use {used} (0..{used - 1}): "
            f"the logits of its {len(data.train) + len(data.val)} images would take {logits_mb:.0f} MiB, more than "
            f"dataset.memory_mb={cfg.memory_mb}; declare the classes the labels use"
        )
