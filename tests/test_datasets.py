"""File datasets through torchvision's classes: what is loaded is exactly what the official format holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from dataset_files import write_cifar10, write_cifar100, write_image_folder, write_mnist, write_svhn

from kd_runner.config import DatasetConfig
from kd_runner.data import build_dataset
from kd_runner.data.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_CROP,
    PAD_CROP_FLIP,
    RESIZED_CROP_FLIP,
    eval_transform,
    holdout,
)
from kd_runner.errors import UserError


def _cfg(name, root, **kw):
    return DatasetConfig(name=name, root=str(root), val_split=kw.pop("val_split", "test"), **kw)


def _assert_split(split, images, labels):
    assert split.images.dtype == torch.uint8
    assert torch.equal(split.images, torch.from_numpy(images))
    assert torch.equal(split.labels, torch.from_numpy(labels))


@pytest.mark.parametrize(
    "name,writer,augmentation,num_classes",
    [
        ("cifar10", write_cifar10, PAD_CROP_FLIP, 10),
        ("cifar100", write_cifar100, PAD_CROP_FLIP, 100),
        ("mnist", write_mnist, None, 10),
        ("fashion_mnist", lambda root: write_mnist(root, folder="FashionMNIST"), None, 10),
        ("svhn", write_svhn, PAD_CROP, 10),
    ],
)
def test_file_dataset_loads_the_written_arrays(tmp_path, name, writer, augmentation, num_classes):
    (train_x, train_y), (test_x, test_y) = writer(tmp_path)
    data = build_dataset(_cfg(name, tmp_path))
    _assert_split(data.train, train_x, train_y)
    _assert_split(data.val, test_x, test_y)  # val_split=test: the official test split
    assert data.num_classes == num_classes and data.name == name
    assert data.augmentation == augmentation
    expected_mean = torch.from_numpy(train_x).float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(data.mean), expected_mean, atol=1e-5)
    assert build_dataset(_cfg(name, tmp_path, augment=False)).augmentation is None


def test_svhn_digit_zero_is_label_zero(tmp_path):
    (_, labels), _ = write_svhn(tmp_path)  # written as 10 in the .mat file, as the official files do
    data = build_dataset(_cfg("svhn", tmp_path))
    assert int((data.train.labels == 0).sum()) == int((labels == 0).sum()) > 0
    assert int(data.train.labels.max()) == 9


def test_holdout_split_is_stratified_and_fixed_by_seed(tmp_path):
    (train_x, train_y), _ = write_mnist(tmp_path, n_train=100)
    cfg = _cfg("mnist", tmp_path, val_split="holdout", val_fraction=0.2, split_seed=1)
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    per_class = torch.bincount(torch.from_numpy(train_y), minlength=10)
    assert torch.bincount(a.val.labels, minlength=10).tolist() == [round(0.2 * int(n)) for n in per_class]
    other = build_dataset(dataclasses.replace(cfg, split_seed=2))
    assert not torch.equal(other.val.images, a.val.images)
    # together the two parts are exactly the training file, each image once
    rows = {bytes(x.numpy()) for x in torch.cat([a.train.images, a.val.images])}
    assert rows == {bytes(x) for x in train_x} and len(a.train) + len(a.val) == len(train_x)


def test_holdout_keeps_a_single_sample_class_in_train():
    from kd_runner.data import Split

    split = Split(torch.arange(7).view(7, 1, 1, 1).to(torch.uint8), torch.tensor([0, 0, 0, 0, 1, 1, 2]))
    train, val = holdout(split, 0.5, 0)
    assert sorted(val.labels.tolist()) == [0, 0, 1] and sorted(train.labels.tolist()) == [0, 0, 1, 2]


def test_image_folder_decodes_like_torchvision_eval_transform(tmp_path):
    write_image_folder(tmp_path, per_class={"train": 4, "val": 3})
    data = build_dataset(_cfg("imagefolder", tmp_path, image_size=32))
    reference = torchvision.datasets.ImageFolder(tmp_path / "val", transform=eval_transform(32))
    assert reference.classes == ["ants", "bees"]
    assert torch.equal(data.val.images, torch.stack([img for img, _ in reference]))
    assert data.val.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.train.labels.tolist() == [0] * 4 + [1] * 4
    assert data.train.images.shape == (8, 3, 32, 32) and data.num_classes == 2
    assert (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert data.augmentation == RESIZED_CROP_FLIP
    # torchvision's eval recipe: shorter side to 256/224 of the crop, then the centre crop
    assert [type(t).__name__ for t in eval_transform(224).transforms] == ["Resize", "CenterCrop", "PILToTensor"]
    assert eval_transform(224).transforms[0].size == 256


def test_image_folder_with_different_classes_in_val(tmp_path):
    write_image_folder(tmp_path, per_class={"train": 2})
    write_image_folder(tmp_path, per_class={"val": 2}, classes=("ants", "wasps"))
    with pytest.raises(UserError, match=r"\['ants', 'bees'\] in train/ but \['ants', 'wasps'\] in val/"):
        build_dataset(_cfg("imagefolder", tmp_path, image_size=32))


def test_fake_data_is_torchvision_fakedata():
    cfg = DatasetConfig(name="fake", num_samples=20, image_size=16, channels=3, num_classes=4, val_split="test")
    data = build_dataset(cfg)
    reference = torchvision.datasets.FakeData(
        size=20, image_size=(3, 16, 16), num_classes=4, transform=torchvision.transforms.PILToTensor()
    )
    assert torch.equal(data.train.images, torch.stack([img for img, _ in reference]))
    assert data.train.labels.tolist() == [label for _, label in reference]
    assert len(data.val) == 4 and not torch.equal(data.val.images, data.train.images[:4])


@pytest.mark.parametrize(
    "name,layout",
    [
        ("cifar10", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"),
        ("cifar100", "cifar-100-python/{train, test, meta}"),
        ("mnist", "MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/{train-images-idx3-ubyte"),
        ("svhn", "{train_32x32.mat, test_32x32.mat}"),
        ("imagefolder", "train/<class>/<image> and {root}/val/<class>/<image>"),
    ],
)
def test_missing_files_name_the_expected_layout(tmp_path, name, layout):
    root = tmp_path / "nothing"
    with pytest.raises(UserError) as err:
        build_dataset(_cfg(name, root))
    message = str(err.value)
    assert "\n" not in message
    assert f"dataset={name}" in message and layout.replace("{root}", str(root)) in message
    assert str(root) in message
    assert ("dataset.download=true" in message) == (name != "imagefolder")


def test_an_unreadable_file_is_a_user_error(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read the cifar10 files under dataset.root"):
        build_dataset(_cfg("cifar10", tmp_path))
