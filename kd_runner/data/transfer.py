"""The transfer set: the data the student is distilled on.

By default the student learns from the teacher's own training split. `transfer=<dataset>` distils it on
another dataset's training inputs instead (domain adaptation: the teacher fine-tuned on a source domain,
the student distilled on the target and evaluated on the target's validation split).
`transfer.exclude_classes` leaves classes out of the transfer set (Hinton's omitted-digit experiment); the
validation split keeps them, so per-class accuracy shows what the student learnt about them from the
soft targets alone. `transfer.labeled=false` declares the transfer labels unused (the config then requires
alpha=0). `transfer.omitted_bias` applies Hinton's correction after distillation (kd_runner.run.student).
The transfer set is normalised with the teacher's dataset statistics: the teacher's outputs are
only meaningful on inputs prepared the way it was trained.
"""

from __future__ import annotations

import hashlib

import torch

from kd_runner.config import RunConfig
from kd_runner.data import Dataset, Split, build_dataset
from kd_runner.data.splits import SplitData
from kd_runner.errors import UserError


def _shape(d: Dataset) -> str:
    return f"{d.in_channels}x{d.image_size}x{d.image_size} images, {d.num_classes} classes"


def transfer_data(cfg: RunConfig, data: Dataset, device_data: SplitData) -> SplitData:
    """The student's splits on the device: `device_data` itself unless a transfer set is configured."""
    t = cfg.transfer
    if t.dataset is None and not t.exclude_classes:
        return device_data
    source = data
    if t.dataset is not None:
        source = build_dataset(t.dataset)
        if (source.in_channels, source.image_size, source.num_classes) != (
            data.in_channels,
            data.image_size,
            data.num_classes,
        ):
            raise UserError(
                f"transfer.dataset={source.name} has {_shape(source)}, the teacher's dataset={data.name} "
                f"{_shape(data)}: the teacher must take the transfer inputs and predict the same classes"
            )
    if t.dataset is not None:
        _check_unseen_val(source, data)
    bad = [c for c in t.exclude_classes if c >= data.num_classes]
    if bad:
        raise UserError(
            f"transfer.exclude_classes={t.exclude_classes} is not allowed: {data.name} has classes "
            f"0..{data.num_classes - 1}"
        )
    keep = ~torch.isin(source.train.labels, torch.tensor(t.exclude_classes, dtype=torch.int64))
    if not bool(keep.any()):
        raise UserError(f"transfer.exclude_classes={t.exclude_classes} leaves no training samples in {source.name}")
    train = Split(source.train.images[keep], source.train.labels[keep])
    student = Dataset(source.name, train, source.val, data.num_classes, data.mean, data.std, source.augmentation)
    return device_data.like(student)


def _row_digests(images: torch.Tensor) -> set[bytes]:
    rows = images.detach().cpu().contiguous().view(len(images), -1)
    return {hashlib.blake2b(row.view(torch.uint8).numpy().tobytes(), digest_size=16).digest() for row in rows}


def _check_unseen_val(source: Dataset, data: Dataset) -> None:
    """Refuse a transfer set whose validation images the teacher trained on (e.g. the same dataset under
    another split_seed): the student would be scored on data its teacher memorised."""
    seen = _row_digests(data.train.images)
    shared = sum(d in seen for d in _row_digests(source.val.images))
    if shared:
        raise UserError(
            f"transfer.dataset={source.name}: {shared} of its {len(source.val)} validation images are in the "
            f"teacher's training split (dataset={data.name}); give transfer.dataset the same val_split, "
            "val_fraction and split_seed as dataset, or use data the teacher did not train on"
        )


def describe_transfer(cfg: RunConfig, student_data: SplitData, omitted_bias: dict | None = None) -> dict:
    """The transfer set as recorded in result.json, with the bias added to each excluded class (if any)."""
    t = cfg.transfer
    return {
        "dataset": cfg.dataset.name if t.dataset is None else t.dataset.name,
        "train_samples": len(student_data.train),
        "val_samples": len(student_data.val),
        "labeled": t.labeled,
        "exclude_classes": list(t.exclude_classes),
        "augmented": student_data.augmentation is not None,
        "omitted_bias": t.omitted_bias,
        "omitted_bias_added": omitted_bias,
    }
