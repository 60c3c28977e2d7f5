"""Hostile input (issue 12): values, files and flags that once crashed with a traceback or misled. Each
gives one line naming the key or file, exit 2, and nothing written (docs/errors.md)."""

from __future__ import annotations

import pytest
from helpers import usage_error_line

SEED_TOP = "4294967295"
PREFLIGHT_CASES = [
    (["seed=-1"], ["seed=-1", f"[0, {SEED_TOP}]"]),
    (["seed=4294967296"], ["seed=4294967296", f"[0, {SEED_TOP}]"]),
    (["seed=1180591620717411303424"], ["seed=1180591620717411303424", f"[0, {SEED_TOP}]"]),
    (["teacher.seed=-1"], ["teacher.seed=-1", f"[0, {SEED_TOP}]"]),
    (["teacher.seed=4294967295", "teacher.ensemble=2"], ["teacher.seed=4294967295", "[0, 4294967294]"]),
    (["dataset.split_seed=-1"], ["dataset.split_seed=-1", f"[0, {SEED_TOP}]"]),
    (["transfer=digits", "transfer.dataset.split_seed=-1"], ["transfer.dataset.split_seed=-1"]),
]


@pytest.mark.parametrize("args,expected", PREFLIGHT_CASES, ids=[" ".join(a) for a, _ in PREFLIGHT_CASES])
def test_refused_in_the_preflight_with_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", *args], capsys)
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []
