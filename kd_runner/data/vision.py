"""Datasets read through torchvision's own classes, decoded once into in-memory uint8 tensors.

mnist, fashion_mnist, cifar10, cifar100 and svhn read the official files (and download them with
`dataset.download=true`); imagefolder reads a `train/` + `val/` tree of class folders (the layout of the
ants-and-bees "hymenoptera_data" set); fake is torchvision's FakeData. Each split is decoded once into one
N x C x H x W uint8 tensor, so the engine batches by index and augments whole batches on the device
(`kd_runner.data.augment`). Missing files are a one-line UserError giving the expected layout.

Validation is the dataset's own test split (`val_split=test`; the `val/` folder for imagefolder) or a
stratified share of train fixed by `split_seed` (`val_split=holdout`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torchvision import transforms

from kd_runner.data import Dataset, Split, channel_stats
from kd_runner.data.augment import Augmentation
from kd_runner.errors import UserError, one_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_CROP_FLIP = Augmentation(crop_padding=4, flip=True)  # CIFAR: RandomCrop(32, padding=4) + flip
PAD_CROP = Augmentation(crop_padding=4)  # SVHN: digits are not mirror-symmetric, so no flip
RESIZED_CROP_FLIP = Augmentation(resized_crop=True, flip=True)  # image folders: RandomResizedCrop + flip


def _cifar_files_present(self) -> bool:
    names = [name for name, _ in self.train_list + self.test_list]
    return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in names)


def _presence_checked(cifar: type) -> type:
    """torchvision's CIFAR10/CIFAR100, checking the extracted batch files by presence instead of their md5.

    The download still verifies the archive's md5; this lets a subset or a re-packed copy of the batches
    (same pickle format, other content) load too. A corrupted file fails when it is unpickled.
    """
    attributes = {"meta": {**cifar.meta, "md5": None}, "_check_integrity": _cifar_files_present}
    return type(cifar.__name__, (cifar,), attributes)


_CIFAR10 = _presence_checked(torchvision.datasets.CIFAR10)
_CIFAR100 = _presence_checked(torchvision.datasets.CIFAR100)


class _SVHN(torchvision.datasets.SVHN):
    """torchvision's SVHN, checking the .mat file by presence (the download still verifies its md5)."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_layout(folder: str) -> str:
    return f"{{root}}/{folder}/raw/{{{', '.join(MNIST_FILES)}}} (the official files, gunzipped)"


@dataclass(frozen=True)
class FileDataset:
    """How to read one file dataset with torchvision, and what it is."""

    cls: type  # the torchvision dataset class
    layout: str  # the files expected under {root}, for the error message
    num_classes: int
    augmentation: Augmentation | None  # its standard training augmentation
    files: tuple[str, ...]  # the files torchvision requires, relative to {root}: checked before any work
    test_files: tuple[str, ...] = ()  # required only to read the test split (val_split=test)
    by_split: bool = False  # the class takes split="train"/"test" (SVHN) instead of train=True/False


FILE_DATASETS = {
    "mnist": FileDataset(
        torchvision.datasets.MNIST, _mnist_layout("MNIST"), 10, None, tuple(f"MNIST/raw/{f}" for f in MNIST_FILES)
    ),
    "fashion_mnist": FileDataset(
        torchvision.datasets.FashionMNIST,
        _mnist_layout("FashionMNIST"),
        10,
        None,
        tuple(f"FashionMNIST/raw/{f}" for f in MNIST_FILES),
    ),
    "cifar10": FileDataset(
        _CIFAR10,
        "{root}/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python version, extracted)",
        10,
        PAD_CROP_FLIP,
        tuple(
            f"cifar-10-batches-py/{f}"
            for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
        ),
    ),
    "cifar100": FileDataset(
        _CIFAR100,
        "{root}/cifar-100-python/{train, test, meta} (the python version, extracted)",
        100,
        PAD_CROP_FLIP,
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
    ),
    "svhn": FileDataset(
        _SVHN,
        "{root}/{train_32x32.mat, test_32x32.mat} (the cropped-digits format)",
        10,
        PAD_CROP,
        ("train_32x32.mat",),
        ("test_32x32.mat",),
        by_split=True,
    ),
}
IMAGEFOLDER_LAYOUT = "{root}/train/<class>/<image> and {root}/val/<class>/<image> (e.g. hymenoptera_data)"


def check_root(cfg) -> None:
    """A data folder, or a file in it, that is not there (and will not be downloaded): the same one line
    as when the files are read, but before any work, so the preflight catches it for every job of a sweep."""
    if cfg.name in FILE_DATASETS and not cfg.download:
        if not os.path.isdir(cfg.root):
            raise _files_error(cfg, f"no {cfg.name} files under dataset.root={cfg.root!r}")
        spec = FILE_DATASETS[cfg.name]
        needed = spec.files + (spec.test_files if cfg.val_split == "test" else ())
        missing = [f for f in needed if not os.path.isfile(os.path.join(cfg.root, f))]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise _files_error(cfg, f"no file {os.path.join(cfg.root, missing[0])!r}{more}")
    if cfg.name == "imagefolder":
        for split in ("train", "val") if cfg.val_split == "test" else ("train",):
            if not os.path.isdir(os.path.join(cfg.root, split)):
                expected = IMAGEFOLDER_LAYOUT.replace("{root}", cfg.root.rstrip("/") or "/")
                raise UserError(
                    f"dataset=imagefolder: no folder {os.path.join(cfg.root, split)!r}; expected {expected}: "
                    "put the images there or set dataset.root to their folder"
                )


def _files_error(cfg, problem: str) -> UserError:
    expected = FILE_DATASETS[cfg.name].layout.replace("{root}", cfg.root.rstrip("/") or "/")
    return UserError(
        f"dataset={cfg.name}: {problem}; expected {expected}: put the files there, or set dataset.root "
        f"to their folder{'' if cfg.download else ', or dataset.download=true'}"
    )


def _open_file_dataset(cfg, train: bool):
    """torchvision's dataset object for one split; missing or unreadable files become a one-line UserError."""
    spec = FILE_DATASETS[cfg.name]
    split = {"split": "train" if train else "test"} if spec.by_split else {"train": train}
    try:
        return spec.cls(cfg.root, download=cfg.download, **split)
    except Exception as exc:  # missing files, a failed download (offline), or a file that does not parse
        if cfg.download:
            problem = f"download into {cfg.root!r} failed ({one_line(exc)})"
        elif "not found" in str(exc):
            problem = f"no {cfg.name} files under dataset.root={cfg.root!r}"
        else:
            problem = f"cannot read the {cfg.name} files under dataset.root={cfg.root!r} ({one_line(exc)})"
        raise _files_error(cfg, problem) from None


def _as_split(data, targets) -> Split:
    """torchvision's decoded arrays (N x H x W, N x H x W x C or N x C x H x W) as a uint8 N x C x H x W split."""
    images = torch.as_tensor(data)
    if images.dim() == 3:
        images = images[:, None]
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    return Split(images.contiguous(), torch.as_tensor(targets, dtype=torch.int64))


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A stratified split of `split`: about `fraction` of every class (at least one sample) goes to validation."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for label in torch.unique(split.labels):
        idx = torch.nonzero(split.labels == label).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) > 1 else 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train_idx, val_idx = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
    return Split(split.images[train_idx], split.labels[train_idx]), Split(split.images[val_idx], split.labels[val_idx])


def _splits(cfg, load: Callable[[bool], Split]) -> tuple[Split, Split]:
    """(train, val): the own test split, or a holdout of train (then the test split is not read)."""
    train = load(True)
    if cfg.val_split == "holdout":
        return holdout(train, cfg.val_fraction, cfg.split_seed)
    return train, load(False)


def build_file_dataset(cfg) -> Dataset:
    """One of FILE_DATASETS, both splits decoded to uint8 tensors, normalised with the training split's stats."""
    spec = FILE_DATASETS[cfg.name]

    def load(train: bool) -> Split:
        ds = _open_file_dataset(cfg, train)
        return _as_split(ds.data, ds.labels if spec.by_split else ds.targets)  # SVHN names them labels

    train, val = _splits(cfg, load)
    mean, std = channel_stats(train.images)
    augmentation = spec.augmentation if cfg.augment else None
    return Dataset(cfg.name, train, val, spec.num_classes, mean, std, augmentation)


def decode(dataset) -> Split:
    """Every (image, label) of a torchvision dataset whose transform ends in PILToTensor, as one uint8 split.

    A file that cannot be decoded stops the run with one line naming it (rather than silently training on
    fewer images than the folder shows); files without an image extension are never read (torchvision's rule).
    """
    items = []
    for i in range(len(dataset)):
        try:
            items.append(dataset[i])
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            path = dataset.samples[i][0] if hasattr(dataset, "samples") else f"item {i}"
            raise UserError(
                f"dataset=imagefolder: cannot decode {path!r} ({one_line(exc)}): "
                "remove or replace the file (every image file in the folders must be readable)"
            ) from None
    images, labels = zip(*items)
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def eval_transform(image_size: int):
    """Resize the shorter side to image_size * 256/224, then a centred square crop (torchvision's eval recipe)."""
    return transforms.Compose(
        [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )


def _open_image_folder(cfg, part: str) -> torchvision.datasets.ImageFolder:
    path = os.path.join(cfg.root, part)
    try:
        return torchvision.datasets.ImageFolder(path, transform=eval_transform(cfg.image_size))
    except OSError as exc:  # no such folder, no class folders, or no image files in them
        expected = IMAGEFOLDER_LAYOUT.replace("{root}", cfg.root.rstrip("/") or "/")
        raise UserError(
            f"dataset=imagefolder: cannot read {path!r} ({one_line(exc)}); expected {expected}: put the "
            "images there or set dataset.root to their folder"
        ) from None


def build_imagefolder(cfg) -> Dataset:
    """A `train/` and `val/` tree of class folders, every image decoded once at `image_size` (ImageNet stats).

    With val_split=holdout only `train/` is read. Both splits are stored resized and centre-cropped
    (`eval_transform`); training augmentation is a random-resized crop of that stored image plus a flip,
    done per batch on the device.
    """
    classes: list[str] = []

    def load(train: bool) -> Split:
        folder = _open_image_folder(cfg, "train" if train else "val")
        if train:
            classes.extend(folder.classes)
        elif folder.classes != classes:
            raise UserError(
                f"dataset=imagefolder: {cfg.root!r} has classes {classes} in train/ but {folder.classes} in val/; "
                "both need the same class folders"
            )
        return decode(folder)

    train, val = _splits(cfg, load)
    augmentation = RESIZED_CROP_FLIP if cfg.augment else None
    return Dataset("imagefolder", train, val, len(classes), IMAGENET_MEAN, IMAGENET_STD, augmentation)


def build_fake(cfg) -> Dataset:
    """torchvision's FakeData: `num_samples` random images (and a test split of val_fraction as many)."""

    def load(train: bool) -> Split:
        size = cfg.num_samples if train else max(2, round(cfg.num_samples * cfg.val_fraction))
        return decode(
            torchvision.datasets.FakeData(
                size=size,
                image_size=(cfg.channels, cfg.image_size, cfg.image_size),
                num_classes=cfg.num_classes,
                transform=transforms.PILToTensor(),
                random_offset=cfg.split_seed * 1_000_003 + (0 if train else cfg.num_samples),
            )
        )

    train, val = _splits(cfg, load)
    mean, std = channel_stats(train.images)
    return Dataset("fake", train, val, cfg.num_classes, mean, std, PAD_CROP_FLIP if cfg.augment else None)
