"""The experiment presets compose to the recipes they document."""

from __future__ import annotations

import pytest
from helpers import compose_config

from kd_runner.models import MODEL_NAMES

CIFAR_NETS = ("resnet8x4", "resnet32x4", "resnet20", "resnet56", "resnet110", "wrn_40_2", "wrn_16_2", "vgg8", "vgg13")


def test_hymenoptera_preset_is_the_reference_recipe():
    cfg = compose_config("experiment=hymenoptera")
    assert (cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size) == ("imagefolder", "data/hymenoptera_data", 224)
    assert cfg.dataset.val_split == "test" and cfg.dataset.augment
    assert (cfg.teacher.name, cfg.student.name) == ("resnet50", "resnet18")
    for stage in (cfg.teacher, cfg.student):
        assert stage.pretrained and stage.weights_path is None
        assert (stage.epochs, stage.batch_size, stage.optimizer, stage.lr, stage.momentum) == (
            25,
            32,
            "sgd",
            0.001,
            0.9,
        )
        assert (stage.scheduler, stage.step_size, stage.gamma, stage.weight_decay) == ("step", 7, 0.1, 0.0)
    assert (cfg.teacher.freeze, cfg.student.freeze) == ("none", "backbone")
    assert cfg.soft_loss == "mse"


def test_cifar100_kd_preset_is_the_crd_benchmark_recipe():
    cfg = compose_config("experiment=cifar100_kd")
    assert cfg.dataset.name == "cifar100" and cfg.dataset.val_split == "test" and cfg.dataset.augment
    assert (cfg.teacher.name, cfg.student.name) == ("resnet32x4", "resnet8x4")
    for stage in (cfg.teacher, cfg.student):
        assert (stage.epochs, stage.batch_size, stage.lr, stage.weight_decay) == (240, 64, 0.05, 5e-4)
        assert (stage.scheduler, stage.milestones, stage.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert (cfg.alpha, cfg.temperature, cfg.soft_loss) == (0.1, 4.0, "kl")  # 0.9 on the KD term


def test_cifar10_resnet_preset():
    cfg = compose_config("experiment=cifar10_resnet")
    assert (cfg.dataset.name, cfg.teacher.name, cfg.student.name) == ("cifar10", "resnet50", "resnet18")
    assert not cfg.teacher.pretrained and cfg.teacher.scheduler == "cosine" and cfg.alpha == 0.1


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_nets_have_config_files(name):
    assert name in MODEL_NAMES
    cfg = compose_config(f"teacher={name}", f"student={name}")
    assert cfg.teacher.name == cfg.student.name == name


def test_transfer_group_picks_a_dataset_config():
    cfg = compose_config("transfer=svhn", "transfer.dataset.root=/d", "transfer.exclude_classes=[3,5]")
    assert (cfg.transfer.dataset.name, cfg.transfer.dataset.root, cfg.transfer.dataset.val_split) == (
        "svhn",
        "/d",
        "test",
    )
    assert cfg.transfer.exclude_classes == [3, 5] and cfg.dataset.name == "digits"
    assert compose_config().transfer.dataset is None
