"""Hostile input: values, files and flags that once crashed with a traceback or misled. Each
gives one line naming the key or file, exit 2, and nothing written (docs/errors.md)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from helpers import compose_config, kd_run, usage_error_line

from kd_runner import run
from kd_runner.errors import UserError
from kd_runner.store.files import file_lock, remove_orphan_temps
from kd_runner.store.state_dicts import read_state_dict

SEED_TOP = "4294967295"
PREFLIGHT_CASES = [
    (["seed=-1"], ["seed=-1", f"[0, {SEED_TOP}]"]),
    (["seed=4294967296"], ["seed=4294967296", f"[0, {SEED_TOP}]"]),
    (["seed=1180591620717411303424"], ["seed=1180591620717411303424", f"[0, {SEED_TOP}]"]),
    (["teacher.seed=-1"], ["teacher.seed=-1", f"[0, {SEED_TOP}]"]),
    (["teacher.seed=4294967295", "teacher.ensemble=2"], ["teacher.seed=4294967295", "[0, 4294967294]"]),
    (["dataset.split_seed=-1"], ["dataset.split_seed=-1", f"[0, {SEED_TOP}]"]),
    (["transfer=digits", "transfer.dataset.split_seed=-1"], ["transfer.dataset.split_seed=-1"]),
    (["temperature=1e-200"], ["temperature=1e-200", "[0.01, 100]"]),
    (["temperature=1e200"], ["temperature=1e+200", "[0.01, 100]"]),
    (["threads=100000"], ["threads=100000", f"[0, {os.cpu_count()}]"]),
    (["teacher.lr=1e308"], ["teacher.lr=1e+308", "float32 holds (<= 3.4e38)"]),
]


@pytest.mark.parametrize("args,expected", PREFLIGHT_CASES, ids=[" ".join(a) for a, _ in PREFLIGHT_CASES])
def test_refused_in_the_preflight_with_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", *args], capsys)
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "alpha=0,2", "--config-name", "config"],
        ["--config-path", "elsewhere", "alpha=0.5"],
        ["-cn=other", "alpha=0.5"],
        ["--run", "alpha=2"],
    ],
)
def test_no_hydra_flag_turns_off_the_preflight(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", *args], capsys)
    assert "is not allowed" in err or "is not supported by kd-run" in err
    assert list(tmp_path.iterdir()) == []  # no job ran, nothing was written


@pytest.mark.parametrize("flags", [["--cfg=job"], ["-c", "job"], ["--info"]])
def test_informational_flags_still_go_to_hydra(flags, tmp_path):
    assert kd_run("experiment=smoke", *flags, cwd=tmp_path).stdout.strip()
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_name_too_long_for_the_file_system(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", f"hydra.run.dir={'x' * 300}"], capsys)
    assert "hydra.run.dir='xxx" in err and "File name too long" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["[]", '"a string"', "3"])
def test_a_result_json_that_is_no_record(content, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(content)
    err = usage_error_line(["experiment=smoke", "hydra.run.dir=run"], capsys)
    assert "result.json holds a JSON" in err and "not a kd-run record" in err
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]


class RunsCode:
    """Unpickling this runs `os.system`: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    "obj,name", [({"w": RunsCode()}, "system"), (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear")]
)
def test_a_checkpoint_with_pickled_code_is_named_as_such_with_this_torch(obj, name, tmp_path):
    path = tmp_path / "code.pt"
    torch.save(obj, path)
    with pytest.raises(UserError) as refused:
        read_state_dict(path, "teacher.checkpoint")
    assert "holds pickled code or objects" in str(refused.value) and name in str(refused.value)


@pytest.mark.parametrize("override", ["dataset.root=données", "alpha=0,,1"])
def test_an_override_hydra_cannot_parse_says_to_quote(override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", override], capsys)
    assert f"cannot parse the override '{override}'" in err and "must be quoted" in err


@pytest.mark.parametrize(
    "args,expected",
    [
        (["teacher.pretrained=true"], "teacher.pretrained=True is not allowed: false for cnn"),
        (["student.pretrained=true"], "student.pretrained=True is not allowed: false for mlp"),
        (["hydra.job.chdir=true", "teacher.checkpoint=t.pt", "teacher.epochs=0"], "hydra.job.chdir=true is not"),
    ],
)
def test_settings_the_job_would_fail_on_are_refused_in_the_preflight(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({}, tmp_path / "t.pt")
    assert expected in usage_error_line(["experiment=smoke", *args], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]


def test_temporary_files_of_killed_writers_are_removed_and_a_live_writers_kept(tmp_path):
    dead = _finished_pid()
    orphan, live = tmp_path / f".curves.png.{dead}.tmp", tmp_path / f".runs.csv.{os.getpid()}.tmp"
    orphan.write_bytes(b"half a plot")
    live.write_bytes(b"being written")
    remove_orphan_temps(tmp_path)
    assert not orphan.exists() and live.exists()


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_in_the_teacher_logits_cache_are_removed(tmp_path):
    cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "teacher.epochs=1", "student.epochs=1")
    run.run(cfg, tmp_path / "a")
    folder = tmp_path / "cache" / "teacher_logits"
    (entry,) = folder.glob("*-val.pt")
    stale = folder / f".{entry.name}.99999999.tmp"
    stale.write_bytes(b"partial")
    run.run(cfg, tmp_path / "b")
    assert not stale.exists()


def test_a_file_that_is_no_pickle_is_not_called_pickled_code(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=r"truncated, corrupted or not a PyTorch file \(UnpicklingError\)$"):
        read_state_dict(text, "student.weights_path")


def test_a_cache_folder_the_system_will_not_make_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot create .*a-file/teachers/x.lock \(Not a directory\): choose another"):
        with file_lock(blocker / "teachers" / "x.lock"):
            pass
