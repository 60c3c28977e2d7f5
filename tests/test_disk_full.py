"""A full disk (at the start of a run, during a checkpoint write, in the teacher cache) is one line naming the
file, exit 2, and no half-written file: every write goes through store/files.atomic_path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.errors import UserError
from kd_runner.store import files


def _full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize(
    "write",
    [
        lambda path: files.write_json(path, {"a": 1}),
        lambda path: files.write_csv(path, pd.DataFrame({"a": [1]})),
        lambda path: files.save_torch({"w": torch.zeros(3)}, path),
    ],
)
def test_a_full_disk_is_a_user_error_naming_the_file_and_leaves_nothing(write, tmp_path, monkeypatch):
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):  # the write of the temporary file fails
        if "w" in mode and Path(file).name.endswith(".tmp"):
            raise _full(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    monkeypatch.setattr(Path, "write_text", lambda self, text: full_open(self, "w"))
    with pytest.raises(UserError, match=f"the disk is full: cannot write {tmp_path / 'out'} .*cache_dir"):
        write(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_torch_save_on_a_really_full_device_is_named_as_such(tmp_path):
    """torch.save to a path raises a RuntimeError (enforce fail at inline_container.cc) on a full disk;
    save_torch writes through a Python file, whose OSError says ENOSPC. /dev/full is a device that is always full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "w.pt"
    (tmp_path / f".w.pt.{os.getpid()}.tmp").symlink_to("/dev/full")  # the temporary file atomic_path writes
    with pytest.raises(UserError, match="the disk is full: cannot write .*w.pt"):
        files.save_torch({"w": torch.zeros(100_000)}, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "target",
    ["result.json", "student-checkpoint.pt", "teachers"],  # at the start, a checkpoint, the teacher cache
)
def test_a_run_on_a_full_disk_stops_with_one_line(target, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_save, real_write_text = torch.save, Path.write_text

    def save(obj, f, *args, **kwargs):
        if target in str(getattr(f, "name", f)):
            raise _full(f.name)
        return real_save(obj, f, *args, **kwargs)

    def write_text(self, text, *args, **kwargs):
        if target == "result.json" and self.name.startswith(".result.json"):
            raise _full(self)
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SystemExit) as exit_info:
        kd_run_main(["experiment=smoke", "hydra.run.dir=run", "cache_dir=cache", "checkpoint_every_s=0"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("kd-run: error: the disk is full: cannot write ") and target in err
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name == "student.pt"]
    assert leftovers == []
