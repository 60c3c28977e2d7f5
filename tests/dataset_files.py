"""Small datasets written in each dataset's real on-disk format, for torchvision's own loaders to read.

Images are learnable: every class has its own colour (with one channel: a bright horizontal band at its
own height), and each image is that plus noise, which survives crops and flips, so a tiny network
trained for a few epochs is far above chance. Every writer returns the
arrays it wrote (images as N x C x H x W uint8, labels as int64) so tests can compare what is loaded.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def make_images(n: int, channels: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if channels == 1:  # a bright horizontal band whose height tells the class
        band = (np.arange(size) * num_classes // size)[None, :] == np.arange(num_classes)[:, None]
        prototypes = 255 * band.astype(np.float64)[:, None, :, None]
    else:
        prototypes = rng.integers(0, 256, (num_classes, channels, 1, 1))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    noise = rng.integers(0, 256, (n, channels, size, size))
    images = (0.5 * prototypes[labels] + 0.5 * noise).round().astype(np.uint8)
    return images, labels.astype(np.int64)


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the official (Python 2) files


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 40, seed: int = 0):
    """{root}/cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta (dicts of 'data', 'labels')."""
    folder = root / "cifar-10-batches-py"
    images, labels = make_images(5 * per_batch + n_test, 3, 32, 10, seed)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        _pickle(
            folder / f"data_batch_{i + 1}",
            {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": labels[part].tolist(),
                "data": images[part].reshape(per_batch, 3072),  # R plane, G plane, B plane, each row-major
                "filenames": [f"img_{j}.png" for j in range(per_batch)],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels[5 * per_batch :].tolist(),
            "data": images[5 * per_batch :].reshape(n_test, 3072),
            "filenames": [f"test_{j}.png" for j in range(n_test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    return (images[: 5 * per_batch], labels[: 5 * per_batch]), (images[5 * per_batch :], labels[5 * per_batch :])


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0):
    """{root}/cifar-100-python/: train, test (dicts of 'data', 'fine_labels', 'coarse_labels'), meta."""
    folder = root / "cifar-100-python"
    images, labels = make_images(n_train + n_test, 3, 32, 100, seed)
    for name, part in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        fine = labels[part]
        _pickle(
            folder / name,
            {
                "filenames": [f"{name}_{j}.png" for j in range(len(fine))],
                "batch_label": f"{name} batch",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": images[part].reshape(len(fine), 3072),
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic (0, 0, type 0x08 = unsigned byte, number of dims), big-endian dims, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 40, seed: int = 0):
    """{root}/{folder}/raw/: the four IDX files, gunzipped as torchvision keeps them after its download."""
    raw = root / folder / "raw"
    images, labels = make_images(n_train + n_test, 1, 28, 10, seed)
    _idx(raw / "train-images-idx3-ubyte", images[:n_train, 0])
    _idx(raw / "train-labels-idx1-ubyte", labels[:n_train])
    _idx(raw / "t10k-images-idx3-ubyte", images[n_train:, 0])
    _idx(raw / "t10k-labels-idx1-ubyte", labels[n_train:])
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def write_svhn(root: Path, n_train: int = 60, n_test: int = 30, seed: int = 0):
    """{root}/train_32x32.mat, test_32x32.mat: X is 32 x 32 x 3 x N uint8, y is N x 1 with 10 for the digit 0."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    images, labels = make_images(n_train + n_test, 3, 32, 10, seed)
    for name, part in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        x = images[part].transpose(2, 3, 1, 0)  # N x C x H x W -> H x W x C x N
        y = np.where(labels[part] == 0, 10, labels[part]).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x, "y": y})
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def write_image_folder(root: Path, per_class: dict[str, int] | None = None, classes=("ants", "bees"), seed: int = 0):
    """{root}/train/<class>/*.png and {root}/val/<class>/*.png of various sizes (hymenoptera_data's layout).

    Each class has its own colour; images are that colour plus noise, in sizes from 40 to 72 pixels.
    """
    from PIL import Image

    per_class = per_class or {"train": 12, "val": 6}
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (len(classes), 3))
    for part, count in per_class.items():
        for c, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(40, 73, 2)
                pixels = 0.7 * colours[c] + 0.3 * rng.integers(0, 256, (h, w, 3))
                Image.fromarray(pixels.round().astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root
