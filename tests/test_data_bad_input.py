"""Mistakes in the dataset, transfer, ensemble and scheduler keys: one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from kd_runner import cli

CASES = [
    (["dataset.val_split=valid"], ["dataset.val_split='valid'", "test, holdout"]),
    (["dataset.val_split=test"], ["dataset.val_split='test'", "holdout for digits"]),
    (["dataset=imagefolder", "dataset.download=true"], ["dataset.download=True", "mnist, fashion_mnist, cifar10"]),
    (["dataset=cifar10", "dataset.augment=maybe"], ["dataset.augment", "'maybe' is not a valid bool"]),
    (["dataset=fake", "dataset.channels=2"], ["dataset.channels=2", "1 or 3 for fake"]),
    (["transfer=mnist", "transfer.dataset.val_split=dev"], ["transfer.dataset.val_split='dev'", "test, holdout"]),
    (["transfer=imagenet"], ["transfer='imagenet'", "cifar10", "mnist"]),
    (["transfer.labeled=false"], ["alpha=0.5", "0 with transfer.labeled=false"]),
    (["transfer.exclude_classes=[-1]"], ["transfer.exclude_classes=[-1]", "distinct class indices >= 0"]),
    (["transfer.exclude_classes=[3,3]"], ["transfer.exclude_classes=[3, 3]", "distinct"]),
    (["transfer.exclude_classes=3"], ["transfer.exclude_classes", "not a ListConfig, list or tuple"]),
    (["teacher.ensemble=0"], ["teacher.ensemble=0", ">= 1"]),
    (["teacher.ensemble=2", "teacher.epochs=0", f"teacher.checkpoint={__file__}"], ["teacher.ensemble=2", "teacher.epochs=0"]),
    (["student.scheduler=multistep"], ["student.milestones=[]", "increasing epochs > 0"]),
    (["teacher.scheduler=multistep", "teacher.milestones=[5,3]"], ["teacher.milestones=[5, 3]", "increasing"]),
    (["teacher.scheduler=cyclic"], ["teacher.scheduler='cyclic'", "none, step, cosine, onecycle, multistep"]),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_gives_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("kd-run: error: ")
    for text in expected:
        assert text in err, err
    assert list(tmp_path.iterdir()) == []
