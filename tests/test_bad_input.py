"""Every user mistake: one line naming the key, the bad value and what is allowed; exit 2; nothing written."""

from __future__ import annotations

import pytest
from conftest import kd_run

from kd_runner import cli

CASES = [
    (["teacher=resnet5"], ["teacher='resnet5'", "resnet50"]),
    (["student=vgg"], ["student='vgg'", "mlp"]),
    (["dataset=imagenet21k"], ["dataset='imagenet21k'", "digits"]),
    (["student.name=foo"], ["student.name='foo'", "resnet18"]),
    (["alpha=1.5"], ["alpha=1.5", "[0, 1]"]),
    (["alpha=-0.1"], ["alpha=-0.1", "[0, 1]"]),
    (["alpha=abc"], ["alpha", "abc"]),
    (["temperature=0"], ["temperature=0.0", "> 0"]),
    (["temperature=-2"], ["temperature=-2.0", "> 0"]),
    (["soft_loss=l2"], ["soft_loss='l2'", "kl, soft_ce, mse"]),
    (["teacher.epochs=-1"], ["teacher.epochs=-1", ">= 0"]),
    (["student.epochs=two"], ["student.epochs", "two"]),
    (["student.batch_size=0"], ["student.batch_size=0", "> 0"]),
    (["teacher.batch_size=-8"], ["teacher.batch_size=-8", "> 0"]),
    (["student.lr=0"], ["student.lr=0.0", "> 0"]),
    (["teacher.lr=-0.1"], ["teacher.lr=-0.1", "> 0"]),
    (["teacher.optimizer=rmsprop"], ["teacher.optimizer='rmsprop'", "sgd, adam, adamw"]),
    (["student.scheduler=linear"], ["student.scheduler='linear'", "none, step, cosine, onecycle"]),
    (["teacher.epochs=0"], ["teacher.epochs", "teacher.checkpoint"]),
    (["teacher.checkpoint=missing.pt"], ["teacher.checkpoint='missing.pt'", "no such file"]),
    (["device=tpu"], ["device='tpu'", "auto, cpu, cuda, mps"]),
    (["alpah=0.5"], ["alpah"]),
    (["dataset.val_fraction=1.0"], ["dataset.val_fraction=1.0", "(0, 1)"]),
    (["-m", "alpha=0,2"], ["alpha=2.0", "[0, 1]"]),
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
        assert text in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even Hydra's run directory


def test_bad_input_through_the_console_script(tmp_path):
    proc = kd_run("alpha=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "kd-run: error: alpha=2.0 is not allowed: expected a number in [0, 1] (weight of the hard-label loss)"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []
