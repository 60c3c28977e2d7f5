"""Every fast command of README.md and docs/*.md runs as written: the test reads the commands out of the
code blocks of the docs themselves (so an edit of a doc changes what runs) and runs each in a fresh
directory holding the files the doc shows (a fenced block that starts with `# mypkg/nets.py` is that
file), with that directory on PYTHONPATH as the docs say. Fast: the tiny config (`experiment=smoke`) and
the commands that train nothing (`--help`, `--version`); the others need data, a GPU or minutes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOOLS = ("kd-run", "kd-eval", "kd-aggregate", "kd-report", "kd-bench")
TRAINS_NOTHING = ("--help", "--version", "--hydra-help", "--cfg")
SLOW = {  # fast by the rule, but more than a few runs: in the slow set (pytest -m slow)
    "kd-run sweep=alpha experiment=smoke 'seed=range(3)'",
    "kd-run hparams_search=alpha_temperature experiment=smoke hydra.sweeper.n_trials=3 seeds_per_trial=2",
}


def code_lines(text: str) -> list[str]:
    """The lines of a Markdown text's code blocks (indented by 4 spaces, or fenced), a line ending in a
    backslash joined with the next."""
    lines, fenced, joined = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        lines.append(joined)
        joined = ""
    return lines


def doc_files(text: str) -> dict[str, str]:
    """The files a doc shows: each fenced block whose first line is a comment naming a relative path
    (`# mypkg/nets.py`, `# myconf/teacher/tiny.yaml`), the package's own files (kd_runner/...) left out."""
    files = {}
    for block in re.findall(r"^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        first, _, body = block.partition("\n")
        name = re.fullmatch(r"# ([\w./-]+/[\w.-]+\.\w+)", first.strip())
        if name and not name.group(1).startswith("kd_runner/"):
            files[name.group(1)] = block
    return files


def commands(path: Path) -> list[str]:
    """The kd-runner commands of a doc's code blocks, as a shell reads them (comments dropped)."""
    found = []
    for line in code_lines(path.read_text()):
        words = shlex.split(line, comments=True) if line.split(" ", 1)[0] in TOOLS else []
        if words:
            found.append(shlex.join(words))
    return found


def fast(command: str) -> bool:
    words = shlex.split(command)
    return "experiment=smoke" in words or any(word in TRAINS_NOTHING for word in words)


FIRST_SHOWN = {c: path.relative_to(REPO).as_posix() for path in reversed(DOCS) for c in commands(path) if fast(c)}
FAST = sorted((doc, command) for command, doc in FIRST_SHOWN.items())  # a command given in several docs runs once


def test_the_docs_fast_commands_are_found():
    """The extraction itself: a doc whose commands it cannot read would otherwise test nothing."""
    found = {command for _, command in FAST}
    assert {"kd-run experiment=smoke", "kd-run --help", "kd-run --version"} <= found
    assert "kd-run -m experiment=smoke alpha=0,1 seed=0,1" in found  # docs/sweeps.md, a comment after it
    assert len(FAST) >= 6, FAST
    shown = doc_files((REPO / "docs" / "extending.md").read_text())
    assert {"mypkg/nets.py", "mypkg/data.py", "mypkg/losses.py", "myconf/teacher/tiny.yaml"} <= set(shown)
    assert shown["mypkg/losses.py"].startswith("# mypkg/losses.py\nimport torch.nn.functional as F\n")


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reader")


@pytest.mark.parametrize(
    ("doc", "command"),
    [pytest.param(doc, c, marks=[pytest.mark.slow] if c in SLOW else [], id=f"{doc}: {c}") for doc, c in FAST],
)
def test_a_fast_command_of_the_docs_runs_as_written(doc, command, reader):
    """In one directory for all, as a reader who tries the docs one after another (so the smoke teacher
    is trained once and then loaded from the cache)."""
    tmp_path = reader
    for name, content in doc_files((REPO / doc).read_text()).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    words = shlex.split(command)
    tool = str(Path(sys.executable).with_name(words[0]))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # the docs' `export PYTHONPATH=$PWD`
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([tool, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc}: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert not re.search(r"^Traceback", proc.stderr, re.MULTILINE)
