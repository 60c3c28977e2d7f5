"""Soft targets (cached vs per batch), ensembles and transfer sets, through library calls."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config, kd_objective
from torch import nn

from kd_runner.config import DatasetConfig, RunConfig, StageConfig, TransferConfig
from kd_runner.data import Dataset, Split
from kd_runner.data.augment import Augmentation
from kd_runner.data.splits import InMemoryData
from kd_runner.data.transfer import transfer_data
from kd_runner.errors import UserError
from kd_runner.run.student import raise_omitted_bias
from kd_runner.runtime.compute import Compute
from kd_runner.teacher.ensemble import TeacherEnsemble, combine_logits
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine


def _dataset(n=40, classes=4, augmentation=None, seed=0, size=8):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % classes
    val = Split(images[:12].clone(), labels[:12].clone())
    return Dataset("t", Split(images, labels), val, classes, (0.5,) * 3, (0.25,) * 3, augmentation)


def _teacher(classes=4, size=8):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * size * size, classes),
    )


def test_combined_logits_soften_to_the_mean_of_the_softened_members():
    members = [torch.randn(5, 7) * s for s in (1.0, 3.0, 0.3)]
    for t in (1.0, 4.0):
        combined = combine_logits(members, t, "kl")
        mean = torch.stack([F.softmax(m / t, dim=-1) for m in members]).mean(0)
        assert torch.allclose(F.softmax(combined / t, dim=-1), mean, atol=1e-6)
    assert torch.allclose(combine_logits(members, 4.0, "mse"), torch.stack(members).mean(0))
    single = combine_logits(members[:1], 4.0, "kl")  # one member: the same soft targets
    assert torch.allclose(F.softmax(single / 4, -1), F.softmax(members[0] / 4, -1), atol=1e-6)


def test_ensemble_module_combines_its_members():
    a, b = _teacher(), _teacher()
    with torch.no_grad():
        b[-1].weight.mul_(-2)
    ens = TeacherEnsemble([a, b], 2.0, "soft_ce").eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = combine_logits([a.eval()(x), b.eval()(x)], 2.0, "soft_ce")
        assert torch.allclose(ens(x), expected)
    assert sum(p.numel() for p in ens.parameters()) == 2 * sum(p.numel() for p in a.parameters())


def test_cached_and_per_batch_soft_targets_are_identical_without_augmentation(tmp_path):
    d = InMemoryData(_dataset(), Compute(torch.device("cpu")))
    targets = SoftTargets(_teacher().train(), "t", d, tmp_path)
    assert targets.train is not None and targets.source == "computed"  # precomputed once
    assert SoftTargets(_teacher(), "t", d, tmp_path).source == "cache"
    per_batch = SoftTargets(_teacher(), "t", d, tmp_path / "other")
    per_batch.train = None  # force the per-batch path
    idx = torch.tensor([3, 17, 0, 39, 8])
    x = d.normalize(d.train.images[idx])
    assert torch.allclose(targets.batch(idx, x), per_batch.batch(idx, x), atol=1e-6)


def test_with_augmentation_the_teacher_sees_the_students_batch_in_eval_mode(tmp_path):
    d = InMemoryData(_dataset(augmentation=Augmentation(crop_padding=2, flip=True)), Compute(torch.device("cpu")))
    teacher = _teacher().train()
    targets = SoftTargets(teacher, "t", d, tmp_path)
    assert targets.train is None and not teacher.training
    x = d.normalize(d.augmentation(d.train.images[:6], torch.Generator().manual_seed(0)))
    logits = targets.batch(torch.arange(6), x)
    with torch.no_grad():
        assert torch.equal(logits, teacher.eval()(x))
    # an ordinary tensor: every soft loss can use it in a backward pass
    student = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    for kind in ("kl", "soft_ce", "mse"):
        kd_objective(student(x), logits, torch.arange(6) % 4, 0.5, 4.0, kind).backward()
    assert not any(p.grad is not None for p in teacher.parameters())


def _cfg(**transfer) -> RunConfig:
    return RunConfig(transfer=TransferConfig(**transfer))


def test_excluded_classes_never_reach_the_student_batches():
    data = _dataset(n=60, classes=5)
    d = InMemoryData(data, Compute(torch.device("cpu")))
    student_data = transfer_data(_cfg(exclude_classes=[3, 1]), data, d)
    assert set(student_data.train.labels.tolist()) == {0, 2, 4} and len(student_data.train) == 36
    assert torch.equal(student_data.val.labels, d.val.labels)  # validation keeps every class
    seen = []

    def loss_fn(logits, idx, labels, inputs):
        seen.append(labels.clone())
        return F.cross_entropy(logits, labels)

    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))
    stage = StageConfig(epochs=3, batch_size=8)
    engine.fit(
        model, student_data, stage="student", recipe=stage, seed=0, loss_fn=loss_fn, validate=lambda: {}, progress=False
    )
    labels = torch.cat(seen)
    assert len(labels) == 3 * 36 and not bool(torch.isin(labels, torch.tensor([1, 3])).any())


def test_no_transfer_set_reuses_the_teachers_data():
    data = _dataset()
    d = InMemoryData(data, Compute(torch.device("cpu")))
    assert transfer_data(_cfg(), data, d) is d


def test_transfer_dataset_is_the_students_data_with_the_teachers_normalisation():
    data = _dataset()
    d = InMemoryData(data, Compute(torch.device("cpu")))
    cfg = _cfg(dataset=DatasetConfig(name="synthetic", num_samples=30, image_size=8, channels=3, num_classes=4))
    student_data = transfer_data(cfg, data, d)
    assert len(student_data.train) == 24 and len(student_data.val) == 6  # synthetic's own 80/20 split
    assert torch.equal(student_data.normalize.mean, d.normalize.mean)
    assert torch.equal(student_data.normalize.std, d.normalize.std)


@pytest.mark.parametrize(
    "transfer,message",
    [
        (
            {"dataset": DatasetConfig(name="synthetic", image_size=16, channels=3, num_classes=4)},
            "3x16x16 images, 4 classes",
        ),
        (
            {"dataset": DatasetConfig(name="synthetic", image_size=8, channels=3, num_classes=10)},
            "3x8x8 images, 10 classes",
        ),
        ({"exclude_classes": [4]}, "has classes 0..3"),
        ({"exclude_classes": [0, 1, 2, 3]}, "leaves no training samples"),
    ],
)
def test_transfer_mistakes_are_one_line_user_errors(transfer, message):
    data = _dataset()
    with pytest.raises(UserError) as err:
        transfer_data(_cfg(**transfer), data, InMemoryData(data, Compute(torch.device("cpu"))))
    assert message in str(err.value) and "\n" not in str(err.value)


class _Tiny(nn.Module):
    """A linear classifier with its head named as the registered models name theirs (fc)."""

    def __init__(self, classes=4):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(192, classes))

    def forward(self, x):
        return self.fc(x)


def test_omitted_bias_adds_the_given_value_to_the_excluded_classes_only():
    teacher, student = _Tiny(), _Tiny()
    before = student.fc[1].bias.clone()
    data = _dataset()
    d = transfer_data(_cfg(exclude_classes=[3, 1]), data, InMemoryData(data, Compute(torch.device("cpu"))))
    added = raise_omitted_bias(_cfg(exclude_classes=[3, 1], omitted_bias="3.5"), student, teacher, d)
    assert added == {3: 3.5, 1: 3.5}
    assert torch.allclose(student.fc[1].bias - before, torch.tensor([0.0, 3.5, 0.0, 3.5]))


@pytest.mark.parametrize(
    "teacher_bias,alpha,expected",
    [
        (0.0, 0.0, 0.0),  # the soft targets already give class 3 its equal share 1/4: nothing to correct
        (-4.0, 0.5, 2 * math.log(0.25 / (0.5 * math.exp(-2) / (math.exp(-2) + 3)))),  # T=2: 4.899
    ],
)
def test_auto_omitted_bias_restores_the_equal_share_the_soft_targets_withheld(teacher_bias, alpha, expected):
    """A teacher with zero weights gives every input the same soft targets, so the excluded class's share of
    the student's targets is known in closed form: auto adds T * log((1/K) / share)."""
    teacher, student = _Tiny(), _Tiny()
    with torch.no_grad():
        teacher.fc[1].weight.zero_()
        teacher.fc[1].bias.zero_()
        teacher.fc[1].bias[3] = teacher_bias
    before = student.fc[1].bias.clone()
    data = _dataset()
    cfg = dataclasses.replace(_cfg(exclude_classes=[3], omitted_bias="auto"), alpha=alpha, temperature=2.0)
    d = transfer_data(cfg, data, InMemoryData(data, Compute(torch.device("cpu"))))
    added = raise_omitted_bias(cfg, student, teacher, d)
    assert list(added) == [3] and added[3] == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(student.fc[1].bias - before, torch.tensor([0.0, 0.0, 0.0, expected]), atol=1e-5)


def test_ensemble_members_are_separate_cached_teachers(tmp_path):
    """Each member is trained once under its own seed; a single-teacher run reuses member 0."""
    from kd_runner.teacher.ensemble import prepare_teachers

    cfg = RunConfig(cache_dir=str(tmp_path), progress=False)
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, epochs=1, width=4, ensemble=2))
    from kd_runner.data import build_dataset

    data = build_dataset(cfg.dataset)
    d = InMemoryData(data, Compute(torch.device("cpu")))
    ens = prepare_teachers(cfg, data, d, progress=False)
    assert ens.source == "trained,trained" and len(ens.key.split(",")) == 2
    assert [r["stage"] for r in ens.history] == ["teacher_0", "teacher_1"]
    m0, m1 = ens.model.members
    assert not torch.equal(m0.fc.weight, m1.fc.weight)  # different seeds
    single = prepare_teachers(
        dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, ensemble=1)), data, d, False
    )
    assert single.source == "cache" and single.key == ens.key.split(",")[0]
    assert torch.equal(single.model.fc.weight, m0.fc.weight)
    again = prepare_teachers(cfg, data, d, progress=False)
    assert again.source == "cache,cache"


def test_an_ensembles_teacher_metrics_do_not_depend_on_the_temperature(tmp_path):
    """The teacher metrics see the members combined at T=1 (alpha=1: the student too is the same at every T)."""

    from kd_runner import run

    common = ["experiment=smoke", "teacher.ensemble=3", "teacher.epochs=1", "teacher.width=4", "alpha=1"]
    runs = [
        run.run(compose_config(*common, f"temperature={t}", f"cache_dir={tmp_path / 'cache'}"), tmp_path / str(t))
        for t in (1, 8)
    ]
    for name in ("teacher_acc", "agreement", "kl_teacher_student", "logit_gap"):
        assert runs[0]["metrics"][name] == runs[1]["metrics"][name], name
    assert runs[0]["per_class_accuracy"]["teacher"] == runs[1]["per_class_accuracy"]["teacher"]


def test_soft_targets_give_the_metrics_the_ensemble_at_t1(tmp_path):
    d = InMemoryData(_dataset(), Compute(torch.device("cpu")))
    a, b = _teacher().eval(), _teacher().eval()
    with torch.no_grad():
        b[-1].weight.mul_(-2)
    targets = SoftTargets(TeacherEnsemble([a, b], 4.0, "kl"), "e", d, tmp_path, TeacherEnsemble([a, b], 1.0, "kl"))
    with torch.no_grad():
        members = [engine.predict(m, d, d.val.images) for m in (a, b)]
    assert torch.allclose(targets.val, combine_logits(members, 1.0, "kl"), atol=1e-5)
    assert torch.allclose(targets.val_targets, combine_logits(members, 4.0, "kl"), atol=1e-5)


def test_the_recorded_metrics_are_those_of_the_saved_bias_corrected_student(tmp_path):
    """With transfer.omitted_bias the final metrics (result.json, the sweep tables) and student.pt both describe
    the student after the correction: the saved student reproduces the recorded accuracy."""
    import kd_runner
    from kd_runner import run
    from kd_runner.data import build_dataset
    from kd_runner.train.metrics import accuracy, per_class_accuracy

    args = ("experiment=smoke", "transfer=digits", "transfer.exclude_classes=[3]", "transfer.omitted_bias=3.5")
    cfg = compose_config(*args, "alpha=0", f"cache_dir={tmp_path / 'cache'}")
    record = run.run(cfg, tmp_path / "run")
    assert record["transfer"]["omitted_bias_added"] == {3: 3.5}  # Hinton et al.'s raise of the 3s
    data = build_dataset(cfg.dataset)
    with torch.no_grad():
        logits = kd_runner.load_student(tmp_path / "run")(data.val.images)
    assert record["metrics"]["student_acc"] == pytest.approx(accuracy(logits, data.val.labels), abs=1e-6)
    assert record["per_class_accuracy"]["student"] == pytest.approx(
        per_class_accuracy(logits, data.val.labels, data.num_classes), abs=1e-6
    )
