"""The user's own dataset by `_target_` (`dataset.factory`), placed in memory or streamed.

The callable returns `(train, val)` or `(train, val, num_classes)`; each split is a pair of tensors
`(images, labels)` (N x C x H x W, uint8 in [0, 255] or float in [0, 1]; N int labels) or a map-style
`torch.utils.data.Dataset` whose item i is such an image (C x H x W) and its label. Splits that together fit
in `dataset.memory_mb` are materialised as tensors, as the built-in datasets are; larger map-style splits
stay where they are and stream through DataLoader workers (the run then uses `loader=dataloader`), the
reason logged; they are read once when built, for their labels and the digest of their content.
`num_classes` defaults to the largest label + 1.
"""

from __future__ import annotations

import hashlib
import logging
import numbers

import torch
from torch.utils.data import Dataset as TorchDataset

from kd_runner import user_code as targets
from kd_runner.data import Dataset, Split, channel_stats
from kd_runner.errors import UserError

log = logging.getLogger(__name__)
KEY = "dataset.factory"
STATS_SAMPLES = 2048  # images of a streamed training split the normalisation statistics are estimated on


class Images(TorchDataset):
    """The images of a map-style dataset of (image, label) items, read on demand; `digest` identifies the
    content read when the split was built (the cache keys' data digest)."""

    def __init__(self, items: TorchDataset, digest: str):
        self.items, self.digest = items, digest

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i][0]


def build_custom(cfg) -> Dataset:
    """Call `cfg.factory` (a DatasetConfig's) and make its splits a Dataset; a wrong return is one line."""
    path = cfg.factory["_target_"]
    returned = targets.call(cfg.factory, KEY, {})
    if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3):
        got = type(returned).__name__
        raise UserError(f"{KEY}._target_={path} returned {got}: expected (train, val) or (train, val, num_classes)")
    train, val = (_check_split(s, name, path) for s, name in zip(returned[:2], ("train", "val"), strict=True))
    nbytes = sum(_nbytes(s) for s in (train, val))
    over = nbytes > cfg.memory_mb * 2**20
    streamed = over and not any(isinstance(s, Split) for s in (train, val))  # tensors are in memory already
    if streamed:
        log.info(
            "dataset %s: %.0f MiB of images exceed dataset.memory_mb=%d: streamed through DataLoader workers",
            cfg.name,
            nbytes / 2**20,
            cfg.memory_mb,
        )
    elif over:
        log.info("dataset %s: tensors given, kept in memory although larger than dataset.memory_mb", cfg.name)
    place = _streamed if streamed else _materialise
    what = f"{KEY}._target_={path} returned a"
    train, val = place(train, f"{what} train split"), place(val, f"{what} val split")
    top = int(max(train.labels.max(), val.labels.max()))
    num_classes = returned[2] if len(returned) == 3 else top + 1
    if isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool):  # numpy's too
        num_classes = int(num_classes)
    if not isinstance(num_classes, int) or num_classes <= top or min(train.labels.min(), val.labels.min()) < 0:
        raise UserError(f"{KEY}._target_={path}: labels must lie in [0, num_classes={num_classes!r})")
    mean, std = channel_stats(_stats_sample(train.images))
    return Dataset(cfg.name, train, val, num_classes, mean, std)


def _check_split(split, name: str, path: str):
    """A split as a Split of tensors, or the map-style dataset itself; its first sample checked."""
    bad = f"{KEY}._target_={path} returned a {name} split"
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        images, labels = split
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise UserError(f"{bad} of shapes {tuple(images.shape)}, {tuple(labels.shape)}: expected N x C x H x W, N")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise UserError(
                f"{bad} whose labels are {labels.dtype}: expected integer class indices (e.g. labels.long())"
            )
        split = Split(images, labels.long())
    elif not isinstance(split, TorchDataset) or not hasattr(split, "__len__"):
        raise UserError(f"{bad} of type {type(split).__name__}: expected a map-style torch Dataset or (images, labels)")
    if len(split) == 0:
        raise UserError(f"{bad} with 0 samples: each split needs at least one")
    if isinstance(split, TorchDataset):
        image, label = split[0]
        integral = isinstance(label, int) or (isinstance(label, torch.Tensor) and not label.is_floating_point())
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or not integral:
            got = f"({type(image).__name__}, {label!r})"
            raise UserError(f"{bad} whose item 0 is {got}: expected (C x H x W image tensor, integer label)")
    return split


def _nbytes(split) -> int:
    image = split.images[0] if isinstance(split, Split) else split[0][0]
    return len(split) * image.numel() * image.element_size()


def _materialise(split, what: str) -> Split:
    if isinstance(split, Split):
        return split
    items = [split[i] for i in range(len(split))]
    for i, (image, _) in enumerate(items):
        _check_item(i, image, items[0][0], what)
    return Split(torch.stack([image for image, _ in items]), torch.tensor([int(label) for _, label in items]))


def _check_item(i: int, image, first: torch.Tensor, what: str) -> None:
    """Every image of a map-style split has the shape of its item 0 (they are batched together) and finite pixels."""
    if not isinstance(image, torch.Tensor) or image.shape != first.shape:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise UserError(f"{what} whose item {i} is {got}, item 0 {tuple(first.shape)}: every image needs one shape")
    if image.is_floating_point() and not torch.isfinite(image).all():
        raise UserError(f"{what} whose item {i} holds NaN or infinite values: every pixel must be a finite number")


def _streamed(split, what: str) -> Split:
    """The images stay in the map-style dataset. Its items are read once, for the labels and a digest of the
    whole content (images and labels): a teacher or logits cached for other data is never taken for it."""
    content, labels = hashlib.sha256(), []
    first = split[0][0]
    for i in range(len(split)):
        image, label = split[i]
        _check_item(i, image, first, what)
        image = image.detach().cpu().contiguous()
        content.update(f"{image.dtype}{tuple(image.shape)}{int(label)}".encode())
        content.update(image.view(torch.uint8).numpy().tobytes())
        labels.append(int(label))
    return Split(Images(split, content.hexdigest()[:16]), torch.as_tensor(labels, dtype=torch.long))


def _stats_sample(images) -> torch.Tensor:
    """The training images the normalisation statistics come from: all of them, or an even sample when streamed."""
    if isinstance(images, torch.Tensor):
        return images
    step = max(1, len(images) // STATS_SAMPLES)
    return torch.stack([images[i] for i in range(0, len(images), step)])
