"""A sweep's jobs share, within kd-run's process, what their keys say they can (the dataset and its device
copy, the teacher, its soft targets), each job composed once: and each job's results stay exactly those
of the same job run alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.runtime.shared import Shared

JOBS = [("0", "0"), ("0", "1"), ("0.5", "0"), ("0.5", "1")]  # Hydra's order for alpha=0,0.5 seed=0,1


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_a_sweep_shares_work_and_each_job_equals_its_run_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compositions, compose = [], ConfigLoaderImpl.load_sweep_config

    def counted(self, *args, **kwargs):
        compositions.append(args)
        return compose(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    common = ["experiment=smoke", "student.epochs=2", "cache_dir=cache"]
    kd_run_main(["-m", *common, "alpha=0,0.5", "seed=0,1", "hydra.sweep.dir=sweep"])
    assert len(compositions) == len(JOBS)  # each job composed once
    logs = [(tmp_path / "sweep" / str(num) / "kd-run.log").read_text() for num in range(len(JOBS))]
    for kind in ("data", "teacher", "soft targets"):
        shared = [f"{kind}: shared with an earlier job" in log for log in logs]
        assert shared == [False, True, True, True], kind
    for num, (alpha, seed) in enumerate(JOBS):
        kd_run_main([*common, f"alpha={alpha}", f"seed={seed}", f"hydra.run.dir=alone{num}"])
        swept, alone = _result(tmp_path / "sweep" / str(num)), _result(tmp_path / f"alone{num}")
        assert swept["status"] == alone["status"] == "completed"
        assert swept["metrics"] == alone["metrics"]
        assert swept["teacher"]["source"] == ("trained" if num == 0 else "cache")  # as the disk cache says
        assert swept["teacher"]["logits"] == ("computed" if num == 0 else "cache")
        for name in ("student.pt", "student_best.pt"):
            a = torch.load(tmp_path / "sweep" / str(num) / name, weights_only=True)
            b = torch.load(tmp_path / f"alone{num}" / name, weights_only=True)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_keeps_the_last_values_of_each_kind_by_key():
    shared, made = Shared(keep=2), []

    def make(value):
        return lambda: made.append(value) or value

    assert shared.get("teacher", "a", make(1)) == (1, True)
    assert shared.get("teacher", "a", make(2)) == (1, False)  # kept: not made again
    assert shared.get("data", "a", make(3)) == (3, True)  # kinds do not mix
    shared.get("teacher", "b", make(4))
    shared.get("teacher", "c", make(5))  # "a" is the least recently used: dropped
    assert shared.get("teacher", "a", make(6)) == (6, True)
    assert made == [1, 3, 4, 5, 6]
