"""Generate the key and group documentation from the schema (kd_runner/config.py) and the conf/ folder.

It writes the help template of `kd-run --help` (conf/hydra/help/kd_run.yaml) and the group and key
tables of docs/configuration.md, each between its marker comments; the hand-written text around them
stays. tests/test_config_docs.py fails when a committed file differs from what this writes.

    python scripts/config_docs.py          # rewrite the generated parts
    python scripts/config_docs.py --check  # only report the files that are out of date (exit 1)
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from pkgutil import resolve_name

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from kd_runner.cli import compose
from kd_runner.config import RunConfig, key_docs
from kd_runner.methods import METHODS
from kd_runner.names import DATASETS, NETWORKS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
HELP = CONF / "hydra" / "help" / "kd_run.yaml"
DOCS = REPO / "docs" / "configuration.md"

HELP_TEMPLATE = """template: |-
  ${{hydra.help.header}}

  Usage: kd-run [-m] [KEY=VALUE ...] [GROUP=OPTION ...]

  Config groups (GROUP=OPTION; a recipe goes into one stage: +recipe@STAGE=OPTION):
  $APP_CONFIG_GROUPS

  Keys (KEY=DEFAULT: the schema's defaults, which group files and presets change; STAGE is teacher or student):
{keys}

  Composed config of this call:
  $CONFIG
  ${{hydra.help.footer}}
"""
SECTIONS = {
    "": "Top-level keys",
    "STAGE": "Stage keys: `STAGE.KEY` is `teacher.KEY` and `student.KEY`",
    "teacher": "Teacher-only keys",
    "student": "Student-only keys",
    "dataset": "Dataset keys",
    "transfer": "Transfer keys",
}
GROUP_ORDER = ("teacher", "student", "dataset", "transfer", "experiment", "recipe", "sweep", "hparams_search")
REGISTRIES = {"teacher": NETWORKS, "student": NETWORKS, "dataset": DATASETS, "transfer": DATASETS}
GROUP_USE = {
    "recipe": "`+recipe@teacher=NAME`, `+recipe@student=NAME`; in a preset `- /recipe@teacher: NAME`",
    "sweep": "`sweep=NAME`, a multirun",
    "hparams_search": "`hparams_search=NAME`, an Optuna search (extra `optuna`)",
    "method_student": "`method_student=NAME`, picked by kd-run: NAME is the run's STUDENT/METHOD, if that file exists",
}


def value(default) -> str:
    """A default as it is written on the command line."""
    return default if isinstance(default, str) else json.dumps(default, separators=(",", ":"))


def section(key: str) -> str:
    return key.split(".")[0] if "." in key else ""


def rows() -> list[tuple[str, str, str]]:
    """(key, default, doc) of every schema key, by section; a key both stages have alike is one STAGE.KEY."""
    docs = {key: (value(default), doc) for key, default, doc in key_docs(RunConfig)}
    out = []
    for key, (default, doc) in docs.items():
        stage, _, rest = key.partition(".")
        other = {"teacher": "student", "student": "teacher"}.get(stage)
        if other and docs.get(f"{other}.{rest}") == (default, doc):
            if stage == "student":
                continue
            key = f"STAGE.{rest}"
        out.append((key, default, doc))
    order = list(SECTIONS)
    return sorted(out, key=lambda row: order.index(section(row[0])) if section(row[0]) in order else len(order))


def by_section() -> dict[str, list[tuple[str, str, str]]]:
    sections: dict[str, list] = {}
    for row in rows():
        sections.setdefault(section(row[0]), []).append(row)
    return sections


def help_template() -> str:
    width = max(len(f"{key}={default}") for key, default, _ in rows()) + 2
    blocks = [
        "\n".join(f"    {key}={default}".ljust(width + 4) + doc.replace("$", "$$") for key, default, doc in block)
        for block in by_section().values()
    ]
    return HELP_TEMPLATE.format(keys="\n\n".join(blocks))


def md(text: str) -> str:
    """Plain text as the cell of a Markdown table."""
    return text.replace(" | ", ", ").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")


def table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def keys_md() -> str:
    parts = []
    for name, block in by_section().items():
        title = SECTIONS.get(name, f"`{name}.KEY`")
        lines = [(f"`{key}`", f"`{md(default)}`", md(doc)) for key, default, doc in block]
        parts += [f"### {title}", table(("key", "default", "meaning"), lines)]
    return "\n\n".join(parts)


def comment(path: Path) -> str:
    """A config file's leading comment."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            lines.append(line.lstrip("#").strip())
    if not lines:
        raise SystemExit(f"{path.relative_to(REPO)}: no leading comment that says what it is")
    return " ".join(lines)


def description(group: str, option: str) -> str:
    """The first sentence of the option's file comment or, for a registered node, of its builder's docstring
    (a method: its module's)."""
    path = CONF / group / f"{option}.yaml"
    if path.is_file():
        text = comment(path)
    elif group == "distill":
        text = " ".join(inspect.getdoc(inspect.getmodule(METHODS[option])).split())
    else:
        text = " ".join(inspect.getdoc(resolve_name(REGISTRIES[group][option])).split())
    return re.split(r"(?<=\.)\s+", text, maxsplit=1)[0]


def groups() -> dict[str, list[str]]:
    """Config group -> its options as `kd-run --help` lists them (files and registered nodes), hydra/ left out."""
    compose.register()
    with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        names = sorted(g for g in loader.list_groups("") if g != "hydra")
        names.sort(key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER))
        return {g: options(loader, g) for g in names}


def options(loader, group: str) -> list[str]:
    """A group's options; for a group of subfolders only (method_student/), those in its subfolders, as
    FOLDER/OPTION."""
    own = loader.get_group_options(group)
    if own:
        return own
    return [f"{sub}/{o}" for sub in sorted(loader.list_groups(group)) for o in options(loader, f"{group}/{sub}")]


def groups_md() -> str:
    """A table of options per group; groups with the same options (teacher and student) share one."""
    options = groups()
    merged: dict[tuple[str, ...], list[str]] = {}
    for group, names in options.items():
        merged.setdefault(tuple(names), []).append(group)
    parts = []
    for names in merged.values():
        use = "; ".join(GROUP_USE.get(g, f"`{g}=NAME`") for g in names)
        lines = [(f"`{option}`", md(description(names[0], option))) for option in options[names[0]]]
        parts += [f"### {', '.join(f'`{g}`' for g in names)}", f"Use: {use}.", table(("NAME", "what it is"), lines)]
    return "\n\n".join(parts)


def between(text: str, name: str, body: str, comment: tuple[str, str]) -> str:
    """`text` with the part between the markers of `name` replaced by `body`, set off by blank lines."""
    begin = f"{comment[0]}BEGIN generated by scripts/config_docs.py: {name}{comment[1]}\n"
    end = f"{comment[0]}END generated: {name}{comment[1]}\n"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"expected one pair of markers {begin.strip()!r} ... {end.strip()!r}")
    head, rest = text.split(begin)
    return head + begin + "\n" + body.strip("\n") + "\n\n" + end + rest.split(end)[1]


def render(path: Path, text: str) -> str:
    """What `path` should hold, given its current `text`."""
    if path == HELP:
        return between(text, "template", help_template(), ("# ", ""))
    text = between(text, "groups", groups_md(), ("<!-- ", " -->"))
    return between(text, "keys", keys_md(), ("<!-- ", " -->"))


def main(argv: list[str]) -> int:
    stale = [path for path in (HELP, DOCS) if render(path, path.read_text()) != path.read_text()]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run python scripts/config_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(render(path, path.read_text()))
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
