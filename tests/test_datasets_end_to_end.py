"""Real `kd-run` runs on small files in each dataset's official format, transfer sets, ensembles, weights."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torchvision
from dataset_files import write_cifar10, write_cifar100, write_image_folder, write_mnist, write_svhn
from helpers import compose_config, kd_run, read_run, usage_error_line

# small nets and tiny epochs: every run takes seconds
TINY = [
    "teacher=cnn",
    "teacher.width=8",
    "student=mlp",
    "student.width=32",
    "teacher.epochs=3",
    "student.epochs=3",
    "teacher.batch_size=16",
    "student.batch_size=16",
    "progress=false",
]
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # a closed local port


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_cifar10(root / "data")
    write_cifar100(root / "data")
    write_mnist(root / "data")
    write_svhn(root / "svhn")
    write_image_folder(root / "hymenoptera_data")
    return root


def _per_class(result, n):
    per_class = result["per_class_accuracy"]
    assert len(per_class["student"]) == len(per_class["teacher"]) == n
    return per_class


def test_cifar10_with_device_augmentation(files, tmp_path):
    kd_run("dataset=cifar10", f"dataset.root={files / 'data'}", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    result, metrics = read_run(tmp_path / "run")
    assert result["status"] == "completed"
    assert result["transfer"] == {
        "dataset": "cifar10",
        "train_samples": 100,
        "val_samples": 40,
        "labeled": True,
        "exclude_classes": [],
        "augmented": True,
        "omitted_bias": None,
        "omitted_bias_added": None,
    }
    # colour-coded classes survive crops and flips: far above chance (0.1) after three tiny epochs
    assert result["metrics"]["teacher_acc"] > 0.3 and result["metrics"]["student_acc"] > 0.3
    per_class = _per_class(result, 10)
    assert all(0 <= a <= 1 for a in per_class["student"])
    assert list(metrics["stage"]) == ["teacher"] * 3 + ["student"] * 3


def test_cifar100_runs_with_a_hundred_classes(files, tmp_path):
    args = [a for a in TINY if "epochs" not in a] + ["teacher.epochs=1", "student.epochs=1"]
    kd_run(
        "dataset=cifar100",
        f"dataset.root={files / 'data'}",
        "dataset.augment=false",
        *args,
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    result, _ = read_run(tmp_path / "run")
    assert result["transfer"]["train_samples"] == 200 and result["transfer"]["augmented"] is False
    assert result["models"]["student"]["params"] == (3 * 32 * 32 * 32 + 32) + (32 * 100 + 100)  # mlp, depth 1
    _per_class(result, 100)


def test_mnist_with_an_excluded_class(files, tmp_path):
    """Hinton's omitted-digit experiment: no 3 in the transfer set, per-class accuracy on all ten."""
    kd_run(
        "dataset=mnist",
        f"dataset.root={files / 'data'}",
        "transfer.exclude_classes=[3]",
        "transfer.omitted_bias=auto",
        "teacher=mlp",
        "teacher.width=64",
        *TINY[2:],
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    result, _ = read_run(tmp_path / "run")
    labels = torchvision.datasets.MNIST(files / "data", train=True).targets
    assert result["transfer"]["train_samples"] == int((labels != 3).sum()) < len(labels)
    assert result["transfer"]["exclude_classes"] == [3]
    assert result["transfer"]["omitted_bias"] == "auto"
    assert list(result["transfer"]["omitted_bias_added"]) == ["3"]  # the amount auto found for the 3s
    assert math.isfinite(result["transfer"]["omitted_bias_added"]["3"])
    per_class = _per_class(result, 10)
    assert all(a is not None for a in per_class["student"])  # the validation split still has every class
    assert result["metrics"]["teacher_acc"] > 0.8  # the teacher learnt every class, 3 included
    assert per_class["teacher"][3] > 0.5
    assert "transfer set:" in (tmp_path / "run" / "kd-run.log").read_text()


def test_image_folder_hymenoptera_layout(files, tmp_path):
    kd_run(
        "dataset=imagefolder",
        f"dataset.root={files / 'hymenoptera_data'}",
        "dataset.image_size=32",
        *TINY,
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    result, _ = read_run(tmp_path / "run")
    assert result["transfer"]["train_samples"] == 24 and result["transfer"]["val_samples"] == 12
    assert result["transfer"]["augmented"] is True  # random-resized crop + flip
    assert result["metrics"]["teacher_acc"] >= 0.75  # ants and bees have their own colours here
    _per_class(result, 2)


def test_domain_transfer_cifar10_teacher_svhn_student(files, tmp_path):
    """Teacher fine-tuned on the source (CIFAR-10), student distilled and evaluated on the target (SVHN)."""
    kd_run(
        "dataset=cifar10",
        f"dataset.root={files / 'data'}",
        "transfer=svhn",
        f"transfer.dataset.root={files / 'svhn'}",
        *TINY,
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    result, metrics = read_run(tmp_path / "run")
    assert result["transfer"]["dataset"] == "svhn"
    assert (result["transfer"]["train_samples"], result["transfer"]["val_samples"]) == (60, 30)
    assert result["config"]["dataset"]["name"] == "cifar10"
    teacher_rows, student_rows = metrics[metrics.stage == "teacher"], metrics[metrics.stage == "student"]
    assert len(teacher_rows) == 3 and len(student_rows) == 3
    # the student's rows measure the teacher on SVHN's validation split, not on CIFAR-10's
    assert result["metrics"]["teacher_acc"] == student_rows["teacher_acc"].iloc[-1]
    accuracies_on_30 = {round(k / 30, 6) for k in range(31)}
    assert round(result["metrics"]["teacher_acc"], 6) in accuracies_on_30


def test_unlabeled_transfer_data_distils_with_alpha_0(tmp_path):
    kd_run("experiment=smoke", "transfer.labeled=false", "alpha=0", "hydra.run.dir=run", cwd=tmp_path)
    result, _ = read_run(tmp_path / "run")
    assert result["transfer"]["labeled"] is False and result["config"]["alpha"] == 0


def test_ensemble_of_two_teachers_each_cached_once(tmp_path):
    args = ["dataset=fake", "dataset.num_samples=40", "dataset.image_size=16", "teacher.ensemble=2", *TINY]
    kd_run(*args, "hydra.run.dir=run1", cwd=tmp_path)
    kd_run(*args, "hydra.run.dir=run2", cwd=tmp_path)
    first, metrics = read_run(tmp_path / "run1")
    second, _ = read_run(tmp_path / "run2")
    assert first["teacher"]["source"] == "trained,trained" and second["teacher"]["source"] == "cache,cache"
    assert len(set(first["teacher"]["cache_key"].split(","))) == 2
    assert list(metrics["stage"]) == ["teacher_0"] * 3 + ["teacher_1"] * 3 + ["student"] * 3
    assert second["metrics"] == first["metrics"]
    one_teacher = first["models"]["teacher"]["params"] // 2
    assert one_teacher == 3 * 8 * 9 + 16 + 8 * 16 * 9 + 32 + 16 * 32 * 9 + 64 + 32 * 10 + 10  # cnn width 8, depth 3
    assert len(list((tmp_path / "outputs" / "cache" / "teachers").glob("*.pt"))) == 2


def test_missing_dataset_files_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["dataset=cifar10", "dataset.root=nowhere"], capsys)
    assert err == (
        "kd-run: error: dataset=cifar10: no cifar10 files under dataset.root='nowhere'; expected "
        "nowhere/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python version, extracted): "
        "put the files there, or set dataset.root to their folder, or dataset.download=true"
    )
    assert list(tmp_path.iterdir()) == []  # caught in the preflight: nothing written


def test_missing_image_folder_in_a_sweep_is_caught_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["-m", "dataset=imagefolder", "dataset.root=nowhere", "alpha=0,1"], capsys)
    assert err == (
        "kd-run: error: dataset=imagefolder: no folder 'nowhere/train'; expected nowhere/train/<class>/<image> and "
        "nowhere/val/<class>/<image> (e.g. hymenoptera_data): put the images there or set dataset.root to their folder"
    )
    assert list(tmp_path.iterdir()) == []


def test_failed_download_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["dataset=mnist", "dataset.root=data", "dataset.download=true"], capsys)
    assert err.startswith("kd-run: error: dataset=mnist: download into 'data' failed (")
    assert "expected data/MNIST/raw/{train-images-idx3-ubyte" in err


def test_pretrained_offline_names_the_file_and_torch_home(files, tmp_path, monkeypatch, capsys):
    for key, value in {**OFFLINE, "TORCH_HOME": str(tmp_path / "torch")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    args = ["dataset=imagefolder", f"dataset.root={files / 'hymenoptera_data'}", "teacher=resnet18"]
    err = usage_error_line([*args, "teacher.pretrained=true"], capsys)
    assert "ResNet18_Weights.IMAGENET1K_V1" in err and "TORCH_HOME" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err


def test_weights_path_torchvision_state_dict_with_frozen_backbone(files, tmp_path):
    """A local ImageNet-shaped resnet18 state dict: new 2-class head; freeze=backbone trains only the head."""
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    torch.save(saved, tmp_path / "resnet18.pth")
    kd_run(
        "dataset=imagefolder",
        f"dataset.root={files / 'hymenoptera_data'}",
        "dataset.image_size=64",
        "teacher=cnn",
        "teacher.width=8",
        "teacher.epochs=1",
        "student=resnet18",
        f"student.weights_path={tmp_path / 'resnet18.pth'}",
        "student.freeze=backbone",
        "student.epochs=2",
        "student.batch_size=8",
        "student.lr=0.1",
        "progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    student = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    params = {name for name, _ in torchvision.models.resnet18().named_parameters()}
    assert student["fc.weight"].shape == (2, 512)
    backbone = sorted(p for p in params if not p.startswith("fc."))
    assert len(backbone) == 60
    for name in backbone:  # every backbone parameter is exactly the file's
        assert torch.equal(student[name], saved[name]), name
    fresh = torchvision.models.resnet18(num_classes=2)  # the head moved away from any initial value
    assert student["fc.weight"].abs().sum() > 0 and not torch.equal(student["fc.weight"], fresh.fc.weight)


@pytest.mark.slow
def test_hymenoptera_preset_with_cached_imagenet_weights(files, tmp_path, monkeypatch):
    """experiment=hymenoptera end to end: both pretrained nets come from the torch hub cache, offline."""
    torch_home = tmp_path / "torch"
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("resnet50", "resnet18"):
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        torch.save(torchvision.models.get_model(name).state_dict(), checkpoints / os.path.basename(url))
    for key, value in {**OFFLINE, "TORCH_HOME": str(torch_home)}.items():
        monkeypatch.setenv(key, value)
    kd_run(
        "experiment=hymenoptera",
        f"dataset.root={files / 'hymenoptera_data'}",
        "dataset.image_size=64",
        "teacher.epochs=1",
        "student.epochs=1",
        "progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    result, _ = read_run(tmp_path / "run")
    assert result["models"]["teacher"]["name"] == "resnet50" and result["models"]["student"]["name"] == "resnet18"
    assert result["config"]["soft_loss"] == "mse" and result["config"]["student"]["freeze"] == "backbone"
    _per_class(result, 2)


@pytest.mark.parametrize(
    "name,present,missing",
    [
        ("cifar10", ["cifar-10-batches-py/data_batch_1"], "cifar-10-batches-py/data_batch_2' and 5 more"),
        ("mnist", ["MNIST/raw/train-images-idx3-ubyte"], "MNIST/raw/train-labels-idx1-ubyte' and 2 more"),
        ("svhn", ["train_32x32.mat"], "test_32x32.mat'"),
    ],
)
def test_missing_files_in_an_existing_folder_are_caught_before_any_job(
    tmp_path, name, present, missing, monkeypatch, capsys
):
    root = tmp_path / "data"
    for relative in present:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    line = usage_error_line(
        ["-m", f"dataset={name}", f"dataset.root={root}", "alpha=0,1", "hydra.sweep.dir=sweep"], capsys
    )
    assert line.startswith(f"kd-run: error: dataset={name}: no file '{root}/") and missing in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_a_holdout_split_needs_no_test_files(tmp_path):
    from kd_runner.data.vision import check_root

    (tmp_path / "train_32x32.mat").write_bytes(b"")
    check_root(compose_config("dataset=svhn", f"dataset.root={tmp_path}", "dataset.val_split=holdout").dataset)
