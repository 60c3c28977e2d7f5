"""Hostile cases on the run side (issue 21): the user's models, data and layers that once ended in a traceback;
each is one line naming the key, exit 2 (docs/errors.md)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import compose_config, usage_error_line
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from kd_runner import run, user_code
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.config import StageConfig
from kd_runner.data import build_dataset
from kd_runner.data.checks import check_dataset
from kd_runner.errors import UserError
from kd_runner.methods.features import FeatureTap, default_layers, probe
from kd_runner.train import engine


class Recurrent(nn.Module):
    """A conv, an LSTM (whose output is a tuple) and a layer its forward never calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.lstm(self.conv(x).mean(-1).transpose(1, 2))
        return self.fc(out[:, -1])


@pytest.mark.parametrize(
    "layer,flat,message",
    [
        ("unused", False, "layer 'unused' did not run in the model's forward pass: name a layer it uses"),
        ("lstm", False, "layer 'lstm' outputs a tuple, not a tensor: name a layer whose output is one"),
        ("lstm", True, "layer 'lstm' outputs a tuple, not a tensor"),  # an embedding (RKD) was flattened in the hook
    ],
)
def test_a_feature_layer_never_called_or_giving_a_tuple_is_one_line(layer, flat, message):
    model = Recurrent()
    tap = FeatureTap(model, [layer], "distill.student_layers", flat)
    probe(model, torch.rand(2, 1, 8, 8))
    with pytest.raises(UserError, match=f"^distill.student_layers: {message}"):
        tap.features()


def test_the_default_layer_search_passes_over_children_that_give_tuples():
    assert default_layers(Recurrent(), torch.rand(2, 1, 8, 8), False, "distill.student_layers") == ["conv"]


class Items(TorchDataset):
    """A map-style split without .images/.labels; item `bad` raises, item `odd` has another shape."""

    def __init__(self, n: int, bad: int | None = None, odd: int | None = None):
        self.n, self.bad, self.odd = n, bad, odd

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"cannot read item {i}")
        return torch.rand(1, 6 if i == self.odd else 8, 8), i % 3


def tensors(n: int = 30, channels: int = 1, size: int = 8, labels=None):
    return torch.rand(n, channels, size, size), torch.arange(n) % 3 if labels is None else labels


FACTORIES = {}


def factory(name):
    def register(fn):
        FACTORIES[name] = fn
        return fn

    return register


@factory("val_size")
def val_size():
    return tensors(), tensors(size=12)


@factory("val_channels")
def val_channels():
    return tensors(), tensors(channels=3)


@factory("many_classes")
def many_classes():
    return tensors(), tensors(), 10**7


@factory("float_labels")
def float_labels():
    return tensors(labels=(torch.arange(30) % 3).float()), tensors()


@factory("odd_item")
def odd_item():
    return Items(30, odd=5), Items(30)


@factory("mixed_over_memory")
def mixed_over_memory():
    return Items(30), tensors()


def build(name: str, memory_mb: int = 4096):
    cfg = compose_config(
        "dataset.name=mine", f"dataset.factory._target_={__name__}.{name}", f"dataset.memory_mb={memory_mb}"
    )
    return build_dataset(cfg.dataset)


@pytest.mark.parametrize(
    "name,memory_mb,message",
    [
        ("val_size", 4096, r"the training images are C x H x W = \(1, 8, 8\), the validation images \(1, 12, 12\)"),
        ("val_channels", 4096, r"the training images .* \(1, 8, 8\), the validation images \(3, 8, 8\): both splits"),
        ("many_classes", 1024, r"num_classes=10000000 while its labels use 3 \(0..2\): the logits of its 60 images"),
        ("float_labels", 4096, r"a train split whose labels are torch.float32: expected integer class indices"),
        ("odd_item", 4096, r"a train split whose item 5 is \(1, 6, 8\), item 0 \(1, 8, 8\): every image needs one"),
        ("odd_item", 0, r"a train split whose item 5 is \(1, 6, 8\)"),  # streamed: read once, checked alike
    ],
)
def test_a_users_dataset_that_cannot_train_is_one_line(name, memory_mb, message):
    with pytest.raises(UserError, match=message):
        build(name, memory_mb)


def test_a_map_style_split_beside_tensors_over_the_memory_bound_joins_them_in_memory():
    data = build("mixed_over_memory", memory_mb=0)  # was: AttributeError, 'Items' object has no attribute 'labels'
    assert isinstance(data.train.images, torch.Tensor) and len(data.train) == 30


class TrainsBadly(nn.Module):
    """Fine in eval mode (the one-batch check), broken in training."""

    def __init__(self, in_channels, num_classes, **_):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x):
        return self.fc(x.view(-1, 7, 13) if self.training else x.flatten(1))


def unreadable():
    return Items(30, bad=7), Items(30)


def test_a_user_model_that_fails_only_in_training_is_one_line_naming_it(tmp_path):
    cfg = compose_config(
        "experiment=smoke",
        "student.name=mine",
        f"student.model._target_={__name__}.TrainsBadly",
        f"cache_dir={tmp_path / 'c'}",
        "teacher.epochs=1",
    )
    with pytest.raises(UserError, match=rf"^student.model._target_={__name__}.TrainsBadly raised RuntimeError: sh"):
        run.run(cfg, tmp_path / "r")
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 2 and "in forward): fix" in record["message"]


def test_a_dataset_item_that_raises_is_one_line_in_the_preflight(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["experiment=smoke", "dataset.name=mine", f"dataset.factory._target_={__name__}.unreadable"]
    err = usage_error_line(args, capsys)
    assert f"dataset.factory._target_={__name__}.unreadable raised OSError: cannot read item 7" in err
    assert "in __getitem__): fix the code there" in err and list(tmp_path.iterdir()) == []


class CallsKdRunner(nn.Module):
    """A user model whose forward calls into kd_runner, which raises there."""

    def forward(self, x):
        return check_dataset(None, None)


def test_an_error_of_kd_runner_below_the_users_code_is_not_blamed_on_it():
    targets = {"student.model": f"{__name__}.CallsKdRunner"}
    with pytest.raises(AttributeError) as raised:
        CallsKdRunner()(torch.rand(2, 1, 8, 8))
    assert user_code.blamed(raised.value, targets) is raised.value  # the innermost frame is kd_runner's
    with pytest.raises(RuntimeError) as raised:
        TrainsBadly(1, 3).train()(torch.rand(2, 1, 8, 8))
    blamed = user_code.blamed(raised.value, {"student.model": f"{__name__}.TrainsBadly"})
    assert isinstance(blamed, UserError) and "in forward): fix the code there" in str(blamed)
    assert user_code.blamed(raised.value, {}) is raised.value  # no user code named: not the user's


@factory("nan_pixels")
def nan_pixels():
    images, labels = tensors()
    images[4, 0, 2, 2] = float("nan")
    return (images, labels), tensors()


@factory("inf_item")
def inf_item():
    class Inf(Items):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            return image / 0 if i == 3 else image, label

    return Inf(30), Items(30)


@pytest.mark.parametrize(
    "name,message",
    [
        ("nan_pixels", r"the training images hold NaN or infinite values \(first: image 4\)"),
        ("inf_item", r"a train split whose item 3 holds NaN or infinite values"),
    ],
)
def test_images_with_nan_or_infinite_pixels_are_refused_before_they_diverge_a_run(name, message):
    with pytest.raises(UserError, match=message):
        build(name)


@pytest.mark.parametrize(
    "weights,objective,expected",
    [
        ({"distill.weight_nckd": (1e30, 8.0)}, None, "lower distill.weight_nckd=1e+30: the method's loss term"),
        ({"distill.weight_nckd": (50.0, 8.0)}, "pkg.f", "check the objective distill.objective._target_=pkg.f"),
        ({"distill.weight_nckd": (8.0, 8.0)}, None, "lower the learning rate (student.lr=0.1) or check the data"),
    ],
)
def test_the_divergence_hint_names_a_method_weight_or_the_users_objective(weights, objective, expected):
    recipe = StageConfig(lr=0.1)
    assert engine.divergence_hint("student", recipe, "fp32", 4.0, weights, objective).startswith(expected)


def test_a_method_weight_that_diverges_the_student_is_named_not_the_learning_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["experiment=smoke", "teacher.epochs=1", "student.epochs=1", "distill=dkd", "distill.weight_nckd=1e30"]
    with pytest.raises(SystemExit) as exc:
        kd_run_main([*args, "hydra.run.dir=r"])
    err = capsys.readouterr().err
    assert exc.value.code == 3 and "lower distill.weight_nckd=1e+30" in err and "learning rate" not in err


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--cfg"], "--cfg needs what to print: one of: job, hydra, all (e.g. --cfg job)"),
        (["-c", "foo"], "-c foo is not allowed: one of: job, hydra, all"),
        (["--info=foo"], "--info foo is not allowed: one of: all, config, defaults, defaults-tree, plugins"),
        (["--shell-completion=foo"], "--shell-completion=foo is not allowed: --shell-completion takes no value"),
        (["--help=x"], "--help=x is not allowed: --help takes no value"),
        (["logger=[csv,foo]"], "logger='foo' is not allowed: one of: csv, mlflow, tensorboard, wandb"),
    ],
)
def test_a_printing_flag_or_a_list_option_gone_wrong_is_one_line_without_hydras_usage(flags, expected, capsys):
    assert usage_error_line(["experiment=smoke", *flags], capsys).startswith(f"kd-run: error: {expected}")


@factory("numpy_classes")
def numpy_classes():
    import numpy as np

    return tensors(), tensors(), np.int64(3)


def test_a_class_count_given_as_a_numpy_integer_is_taken():
    assert build("numpy_classes").num_classes == 3  # was: "labels must lie in [0, num_classes=np.int64(3))"
