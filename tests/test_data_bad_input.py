"""Mistakes in the dataset, transfer, ensemble and scheduler keys: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from helpers import usage_error_line

CASES = [
    (["dataset.val_split=valid"], ["dataset.val_split='valid'", "test, holdout"]),
    (["dataset.val_split=test"], ["dataset.val_split='test'", "holdout for digits"]),
    (["dataset=imagefolder", "dataset.download=true"], ["dataset.download=True", "mnist, fashion_mnist, cifar10"]),
    (["dataset=cifar10", "dataset.augment=maybe"], ["dataset.augment='maybe' is not allowed: one of: true, false"]),
    (["dataset=fake", "dataset.channels=2"], ["dataset.channels=2", "1 or 3 for fake"]),
    (["transfer=mnist", "transfer.dataset.val_split=dev"], ["transfer.dataset.val_split='dev'", "test, holdout"]),
    (["transfer=imagenet"], ["transfer='imagenet'", "cifar10", "mnist"]),
    (["transfer.labeled=false"], ["alpha=0.5", "0 with transfer.labeled=false"]),
    (["transfer.exclude_classes=[-1]"], ["transfer.exclude_classes=[-1]", "distinct class indices >= 0"]),
    (["transfer.exclude_classes=[3,3]"], ["transfer.exclude_classes=[3, 3]", "distinct"]),
    (["transfer.exclude_classes=3"], ["transfer.exclude_classes", "not a ListConfig, list or tuple"]),
    (
        ["transfer.exclude_classes=[3]", "transfer.omitted_bias=high"],
        ["transfer.omitted_bias='high'", "auto or a number"],
    ),
    (["transfer.omitted_bias=auto"], ["transfer.omitted_bias='auto'", "null unless transfer.exclude_classes"]),
    (
        ["transfer.exclude_classes=[3]", "transfer.omitted_bias=auto", "alpha=1"],
        ["transfer.omitted_bias='auto'", "a number with alpha=1 or soft_loss=mse"],
    ),
    (["teacher.ensemble=0"], ["teacher.ensemble=0", ">= 1"]),
    (
        ["teacher.ensemble=2", "teacher.epochs=0", f"teacher.checkpoint={__file__}"],
        ["teacher.ensemble=2", "teacher.epochs=0"],
    ),
    (["student.scheduler=multistep"], ["student.milestones=[]", "increasing epochs > 0"]),
    (["teacher.scheduler=multistep", "teacher.milestones=[5,3]"], ["teacher.milestones=[5, 3]", "increasing"]),
    (["teacher.scheduler=cyclic"], ["teacher.scheduler='cyclic'", "none, step, cosine, onecycle, multistep"]),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_gives_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(args, capsys)
    for text in expected:
        assert text in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_image_folder_with_a_corrupt_image_stops_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from dataset_files import write_image_folder

    root = tmp_path / "hymenoptera_data"
    write_image_folder(root, per_class={"train": 2, "val": 1})
    (root / "train" / "ants" / "notes.txt").write_text("not an image, no image extension: ignored")
    bad = root / "train" / "bees" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is no png")
    monkeypatch.chdir(tmp_path)
    args = ["experiment=smoke", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16"]
    line = usage_error_line([*args, "hydra.run.dir=run", f"cache_dir={tmp_path / 'cache'}"], capsys)
    assert line.startswith("kd-run: error: dataset=imagefolder: cannot decode ") and str(bad) in line
    assert not (tmp_path / "cache").exists()  # the teacher cache is untouched


def test_excluding_every_class_of_the_transfer_set_is_one_line(tmp_path, monkeypatch, capsys):
    """Found once the data is loaded (the class count is the data's), before the teacher is touched."""
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(
        [
            "experiment=smoke",
            "transfer.exclude_classes=[0,1,2,3,4,5,6,7,8,9]",
            "hydra.run.dir=run",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        capsys,
    )
    assert err == (
        "kd-run: error: transfer.exclude_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] leaves no training samples in digits"
    )
    assert not (tmp_path / "cache").exists()  # no teacher was trained or cached
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
