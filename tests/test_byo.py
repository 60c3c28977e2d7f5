"""Bring your own: networks and datasets from a user package by `_target_`, timm by name, user config groups."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import compose_config, kd_run, usage_error_line

from kd_runner import run
from kd_runner.config import config_digest, stage_settings
from kd_runner.data import build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.models import build_stage_model, classifier_head
from kd_runner.runtime.compute import Compute
from kd_runner.teacher.stage import teacher_key

NETS = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def make_mlp(num_classes, hidden=16, **_):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_network(num_classes):
    return "a string"


NOT_CALLABLE = 3
"""

DATA = """
import torch


class Pairs(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def blobs(n=120, size=8, classes=3, map_style=False):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    images = (torch.rand(n, 1, size, size, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / classes).clamp(0, 1)
    train, val = (images[: n // 2], labels[: n // 2]), (images[n // 2 :], labels[n // 2 :])
    return (Pairs(*train), Pairs(*val)) if map_style else (train, val)


def empty():
    return (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), (torch.zeros(4, 1, 8, 8), torch.arange(4))


def wrong_types():
    return [1, 2, 3], [4, 5]
"""

CONFIGS = {
    "student/tiny.yaml": "name: tiny\nmodel:\n  _target_: mypkg.nets.TinyNet\n  width: 4\n",
    "student/mlp16.yaml": "name: mlp16\nmodel:\n  _target_: mypkg.nets.make_mlp\n",
    "teacher/tiny.yaml": "name: tiny\nmodel:\n  _target_: mypkg.nets.TinyNet\n  width: 16\n",
    "dataset/blobs.yaml": "name: blobs\nfactory:\n  _target_: mypkg.data.blobs\n",
}
FAST = ["experiment=smoke", "teacher.epochs=1", "student.epochs=1"]


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> Path:
    """A user package `mypkg` (nets.py, data.py) and config dir `conf/`, importable here and in kd-run."""
    package = tmp_path / "pkg" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    (package / "data.py").write_text(textwrap.dedent(DATA))
    for name, text in CONFIGS.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")])))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:  # another test's package
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def test_custom_networks_and_dataset_from_the_command_line(user_package):
    out = user_package / "run"
    args = [
        *FAST,
        "teacher.name=tiny",
        "teacher.model._target_=mypkg.nets.TinyNet",
        "+teacher.model.width=16",
        "student.name=mlp16",
        "student.model._target_=mypkg.nets.make_mlp",
        "dataset.name=blobs",
        "dataset.factory._target_=mypkg.data.blobs",
        "+dataset.factory.classes=4",
        f"hydra.run.dir={out}",
        f"cache_dir={user_package / 'cache'}",
    ]
    kd_run(*args, cwd=user_package)
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "completed"
    assert record["models"]["teacher"]["name"] == "tiny" and record["models"]["student"]["name"] == "mlp16"
    assert record["models"]["teacher"]["params"] == 16 * 1 * 9 + 16 + 16 * 4 + 4  # width 16, 1 channel, 4 classes


def test_a_streamed_custom_dataset_runs_end_to_end(user_package):
    """A map-style dataset over the memory bound streams through DataLoader workers, teacher logits cached."""
    out = user_package / "streamed"
    args = [
        *FAST,
        "dataset.name=blobs",
        "dataset.factory._target_=mypkg.data.blobs",
        "+dataset.factory.map_style=true",
        "dataset.memory_mb=0",
        "num_workers=0",
        f"hydra.run.dir={out}",
        f"cache_dir={user_package / 'cache'}",
    ]
    kd_run(*args, cwd=user_package)
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "completed" and record["compute"]["loader"] == "dataloader"
    assert record["teacher"]["logits"] == "computed"
    kd_run(*args, "seed=1", f"hydra.run.dir={out}1", cwd=user_package)  # the same data: its logits from the cache
    assert json.loads((out.with_name("streamed1") / "result.json").read_text())["teacher"]["logits"] == "cache"


def test_sweep_over_two_custom_students_from_a_config_dir(user_package):
    sweep = user_package / "sweep"
    args = ["--config-dir", str(user_package / "conf"), "-m", *FAST, "dataset=blobs", "teacher=tiny"]
    kd_run(*args, "student=tiny,mlp16", f"hydra.sweep.dir={sweep}", f"cache_dir={user_package / 'c'}", cwd=user_package)
    records = [json.loads((sweep / str(job) / "result.json").read_text()) for job in (0, 1)]
    assert [r["models"]["student"]["name"] for r in records] == ["tiny", "mlp16"]
    assert [r["teacher"]["source"] for r in records] == ["trained", "cache"]


@pytest.mark.parametrize("module", ["nets", "data"])
def test_teacher_key_follows_the_model_and_dataset_source(user_package, module):
    cfg = compose_config(
        "teacher.name=tiny",
        "teacher.model._target_=mypkg.nets.TinyNet",
        "dataset.name=blobs",
        "dataset.factory._target_=mypkg.data.blobs",
    )
    data = InMemoryData(build_dataset(cfg.dataset), Compute(torch.device("cpu")))
    key = teacher_key(cfg, data)
    assert teacher_key(cfg, data) == key  # unchanged source: the cached teacher is reused
    source = user_package / "pkg" / "mypkg" / f"{module}.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    assert teacher_key(cfg, data) != key  # edited source: the teacher is trained again


def test_the_config_dir_and_command_line_forms_of_a_network_key_one_teacher(user_package):
    """docs/extending.md's example both ways: the teacher by a group file of --config-dir, or on the command
    line over the default teacher group (cnn, whose width and depth a network of the user's does not read)."""
    search_path = f"hydra.searchpath=['file://{user_package / 'conf'}']"
    by_file = compose_config(search_path, "dataset=blobs", "teacher=tiny", "student=mlp16")
    by_line = compose_config(
        "teacher.name=tiny",
        "teacher.model._target_=mypkg.nets.TinyNet",
        "+teacher.model.width=16",
        "dataset.name=blobs",
        "dataset.factory._target_=mypkg.data.blobs",
    )
    assert (by_line.teacher.width, by_line.teacher.depth) != (by_file.teacher.width, by_file.teacher.depth)
    data = InMemoryData(build_dataset(by_file.dataset), Compute(torch.device("cpu")))
    assert teacher_key(by_file, data) == teacher_key(by_line, data)
    other = compose_config(search_path, "dataset=blobs", "teacher=tiny", "teacher.lr=0.01")
    assert teacher_key(other, data) != teacher_key(by_file, data)  # a value the teacher reads still counts


def test_keys_a_recipe_does_not_read_are_not_part_of_its_identity():
    sgd, adam = compose_config("student.momentum=0.5"), compose_config("student.optimizer=adam")
    assert stage_settings(sgd.student) != stage_settings(compose_config().student)
    assert stage_settings(adam.student) == stage_settings(
        compose_config("student.optimizer=adam", "student.momentum=0.5").student
    )
    assert config_digest(compose_config("teacher.gamma=0.5")) == config_digest(compose_config())  # cosine: no gamma
    assert config_digest(compose_config("teacher.scheduler=step", "teacher.gamma=0.5")) != config_digest(
        compose_config("teacher.scheduler=step")
    )


@pytest.mark.parametrize("loader, memory_mb", [("memory", 4096), ("dataloader", 0)])
def test_map_style_dataset_is_materialised_or_streamed(user_package, loader, memory_mb):
    cfg = compose_config(
        "dataset.name=blobs",
        "dataset.factory._target_=mypkg.data.blobs",
        "+dataset.factory.map_style=true",
        f"dataset.memory_mb={memory_mb}",
    )
    data = build_dataset(cfg.dataset)
    assert data.streamed == (loader == "dataloader")
    assert (data.num_classes, data.in_channels, data.image_size, len(data.train)) == (3, 1, 8, 60)
    images = torch.stack([data.train.images[i] for i in range(len(data.train))])
    assert data.mean == pytest.approx((images.mean().item(),), abs=1e-5)  # statistics of the training split


def test_augment_presets_and_given_statistics_on_custom_data(user_package):
    common = ["dataset.name=blobs", "dataset.factory._target_=mypkg.data.blobs"]
    assert build_dataset(compose_config(*common).dataset).augmentation is None  # no standard one of its own
    flip = build_dataset(compose_config(*common, "dataset.augment=crop_flip").dataset).augmentation
    assert flip.crop_padding == 1 and flip.flip and not flip.resized_crop
    resized = build_dataset(compose_config(*common, "dataset.augment=resized_crop_flip").dataset).augmentation
    assert resized.resized_crop and resized.flip
    given = build_dataset(compose_config(*common, "dataset.mean=[0.5]", "dataset.std=[0.25]").dataset)
    assert (given.mean, given.std) == ((0.5,), (0.25,))


def test_builtin_augmentation_unchanged_for_true_and_false():
    assert build_dataset(compose_config("dataset=fake", "dataset.augment=true").dataset).augmentation.crop_padding == 4
    assert build_dataset(compose_config("dataset=fake", "dataset.augment=false").dataset).augmentation is None


def test_custom_network_keeps_weights_path_and_freeze(user_package, tmp_path):
    cfg = compose_config("teacher.name=tiny", "teacher.model._target_=mypkg.nets.TinyNet", "teacher.freeze=backbone")
    data = build_dataset(cfg.dataset)
    model = build_stage_model(cfg.teacher, data, "teacher")
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]  # only fc trains
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = compose_config(
        "teacher.name=tiny", "teacher.model._target_=mypkg.nets.TinyNet", f"teacher.weights_path={tmp_path / 'w.pt'}"
    )
    loaded = build_stage_model(cfg.teacher, data, "teacher")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize(
    "dataset", [["dataset=digits"], ["dataset=synthetic", "dataset.image_size=32", "dataset.channels=3"]]
)
@pytest.mark.parametrize(
    "teacher, student", [("test_resnet", "test_efficientnet"), ("test_efficientnet", "test_resnet")]
)
def test_timm_networks_by_name_fit_the_data(dataset, teacher, student):
    pytest.importorskip("timm")
    cfg = compose_config(
        *dataset,
        "teacher=timm",
        f"teacher.model.arch={teacher}",
        "student=timm",
        f"student.model.arch={student}",
        "student.freeze=backbone",
    )
    run.check.check_user_code(cfg)  # both built for the data's channels and classes, checked on one batch
    data = build_dataset(cfg.dataset)
    model = build_stage_model(cfg.student, data, "student")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable == list(classifier_head(model).parameters())


def test_timm_teacher_and_student_of_two_families_distil_on_digits(tmp_path):
    pytest.importorskip("timm")
    args = [
        *FAST,
        "teacher=timm",
        "teacher.model.arch=test_resnet",
        "student=timm",
        "student.model.arch=test_efficientnet",
        "hydra.run.dir=run",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    kd_run(*args, cwd=tmp_path)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "completed" and record["teacher"]["source"] == "trained"
    assert record["epochs"] == {"teacher": 1, "student": 1}


BAD = [
    (["teacher.model._target_=mypkg.nope.Net"], ["teacher.model._target_='mypkg.nope.Net'", "has no nope.Net"]),
    (["teacher.model._target_=mypkg.nets.Nope"], ["teacher.model._target_='mypkg.nets.Nope'", "no Nope"]),
    (["teacher.model._target_=mypkg.nets.NOT_CALLABLE"], ["NOT_CALLABLE", "a callable"]),
    (["teacher.model._target_=mypkg.nets.not_a_network"], ["not_a_network", "nn.Module", "str"]),
    (["teacher.model._target_=mypkg.nets.TinyNet", "+teacher.model.num_classes=7"], ["(2, 7)", "(2, 10)"]),
    (["teacher.model._target_=mypkg.nets.TinyNet", "+teacher.model.widht=3"], ["teacher.model", "widht"]),
    (["teacher.model._target_=mypkg.nets.TinyNet", "teacher.pretrained=true"], ["teacher.pretrained", "pretrained"]),
    (["dataset.factory._target_=mypkg.data.wrong_types"], ["dataset.factory", "train split", "list"]),
    (["dataset.factory._target_=mypkg.data.empty"], ["dataset.factory", "0 samples"]),
    (["dataset.augment=flip"], ["dataset.augment='flip'", "crop_flip, resized_crop_flip"]),
]


@pytest.mark.parametrize("overrides, parts", BAD)
def test_bad_user_code_is_one_line_and_writes_nothing(user_package, capsys, overrides, parts):
    labels = [o.split(".")[0] + ".name=mine" for o in overrides if "._target_=" in o]
    out = user_package / "never"
    err = usage_error_line([*labels, *overrides, f"hydra.run.dir={out}", f"cache_dir={out}"], capsys)
    assert all(part in err for part in parts), err
    assert not out.exists()


def test_custom_network_needs_a_label_of_its_own(capsys):
    err = usage_error_line(["teacher.model._target_=torch.nn.Linear"], capsys)
    assert "teacher.name='cnn'" in err and "label of your own" in err


def test_the_code_digest_covers_the_user_modules_a_model_imports_and_nothing_installed(tmp_path, monkeypatch):
    """Editing a helper module that the model's file imports (relatively or absolutely) changes the digest
    that keys the teacher and logits caches; a file it does not import, and installed packages, do not count."""
    from kd_runner import user_code as targets

    pkg = tmp_path / "digestpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text("import torch\n\ndef act(x):\n    return torch.relu(x)\n")
    (pkg / "more.py").write_text("SCALE = 1\n")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\nfrom .blocks import act\nfrom digestpkg import more\n\n"
        "def make():\n    return nn.Linear(2, 2)\n"
    )
    (pkg / "unused.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = {"digestpkg", "digestpkg.nets", "digestpkg.blocks", "digestpkg.more"}  # the package: imported too
    assert set(targets.user_sources("digestpkg.nets")) == expected
    before = targets.source_digest("digestpkg.nets.make", "teacher.model._target_")
    (pkg / "unused.py").write_text("X = 2\n")
    assert targets.source_digest("digestpkg.nets.make", "teacher.model._target_") == before
    for helper in ("blocks.py", "more.py"):
        (pkg / helper).write_text((pkg / helper).read_text() + "\n# edited\n")
        after = targets.source_digest("digestpkg.nets.make", "teacher.model._target_")
        assert after != before
        before = after


def test_a_streamed_dataset_is_keyed_by_its_images_not_only_its_labels():
    """New images under the same labels and the same fixed statistics: another data digest, so neither the
    cached teacher nor the cached logits of the old images are taken for them."""
    from torch.utils.data import Dataset as TorchDataset

    from kd_runner.data import Dataset
    from kd_runner.data.custom import _streamed
    from kd_runner.teacher.logits_cache import data_digest

    class Items(TorchDataset):
        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.images[i], int(self.labels[i])

    labels = torch.arange(6) % 3
    old, new = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(6, 1, 4, 4)

    def digest(images):
        split = _streamed(Items(images, labels), "dataset.factory")
        assert torch.equal(split.labels, labels)
        return data_digest(Dataset("mine", split, split, 3, (0.5,), (0.25,)))

    assert digest(old) == digest(old.clone()) and digest(old) != digest(new)


def test_a_finished_run_is_not_skipped_and_an_unfinished_one_not_resumed_after_its_code_changed(user_package):
    """The run's identity covers the user's code: after an edit of the model's source (or of a module it imports)
    the same command into the same directory is refused in one line, never answered with the old numbers."""
    out = user_package / "run"
    args = [*FAST, "teacher.name=tiny", "teacher.model._target_=mypkg.nets.TinyNet", f"hydra.run.dir={out}"]
    kd_run(*args, f"cache_dir={user_package / 'cache'}", cwd=user_package)
    source = user_package / "pkg" / "mypkg" / "nets.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    proc = kd_run(*args, f"cache_dir={user_package / 'cache'}", cwd=user_package, check=False)
    assert proc.returncode == 2 and "skipped" not in proc.stdout
    assert "already holds a run of another config or of other code of yours" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
