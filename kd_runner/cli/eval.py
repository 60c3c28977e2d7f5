"""The `kd-eval` entry point: evaluate a run's saved student (and its cached teacher) on a validation split.

    kd-eval [--config-dir DIR] [--out DIR] RUN_DIR_OR_CHECKPOINT [KEY=VALUE ...]

The run is rebuilt from the config it saved (result.json's `config`), not composed again, so runs of your
own config groups (`--config-dir`, `hydra.searchpath`), search trials and their seeds evaluate as they
ran. A `KEY=VALUE` override replaces that key of the saved config (`dataset.root=...`, `cache_dir=...`);
`GROUP=OPTION` replaces the whole node by the option as kd-run composes it (`dataset=fashion_mnist`, with
`--config-dir` for an option of your own). The evaluation itself is kd_runner.evaluate. The metrics are
printed and written to RUN_DIR/eval/<weights>-<dataset>.json (or --out DIR). A mistake is one line on
stderr with exit code 2; SIGTERM or Ctrl-C stops it with exit code 75, nothing written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from kd_runner.cli import compose
from kd_runner.cli.kd_run import config_dir_override
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import UserError
from kd_runner.evaluate import RunFiles, evaluate, locate
from kd_runner.runtime import interrupt
from kd_runner.store.files import check_writable, write_json

USAGE = (
    "usage: kd-eval [--config-dir DIR] [--out DIR] RUN_DIR_OR_CHECKPOINT [KEY=VALUE ...]  "
    "(e.g. kd-eval outputs/runs/DAY/TIME dataset=mnist)"
)
SAVED = "kd_eval_saved"  # the run's saved config, as the primary config its overrides apply to


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    interrupt.exit_on_signal("kd-eval", hint="nothing was written; run the same command again")
    try:
        path, out_dir, overrides, search_path = parse(argv)
        files = locate(path)
        out_dir = out_dir or files.run_dir / "eval"
        check_writable(out_dir, "--out")
        result = evaluate(run_config(files, overrides, search_path), files)
        out = out_dir / f"{files.weights.stem}-{result['dataset']}.json"
        write_json(out, result)
    except UserError as exc:
        print(f"kd-eval: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    teacher = (
        "with its teacher from the cache" if result["teacher"] else "teacher not in the cache: student metrics only"
    )
    reused = f" ({files.run_dir} reused this run's results)" if files.owner else ""
    samples = f"{result['samples']} validation samples"
    print(f"kd-eval: {files.weights}{reused} on {result['dataset']} ({samples}, {teacher})")
    print("  " + "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items()))
    print(f"  written to {out}")


def parse(argv: list[str]) -> tuple[Path, Path | None, list[str], list[str]]:
    """(run or weights path, --out directory or None, overrides, the search path's override) of kd-eval's
    arguments; the path is the first argument that is no option."""
    rest, search_path = config_dir_override(argv)
    out_dir, args, given = None, [], iter(rest)
    for arg in given:
        if arg in ("--out", "-o"):
            out_dir = Path(next(given, "") or missing(arg))
        elif arg.startswith("--out="):
            out_dir = Path(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            raise UserError(f"{arg} is not an option of kd-eval; {USAGE}")
        else:
            args.append(arg)
    if not args or ("=" in args[0] and not Path(args[0]).exists()):
        raise UserError(f"the first argument must be a run directory or a student weights file; {USAGE}")
    return Path(args[0]), out_dir, args[1:], search_path


def missing(option: str) -> str:
    raise UserError(f"{option} needs a directory; {USAGE}")


def run_config(files: RunFiles, overrides: list[str], search_path: list[str]) -> RunConfig:
    """The run's saved config with `overrides`: a GROUP=OPTION one replaces the node GROUP by the option as
    kd-run composes it (with the GROUP.KEY overrides given), a KEY=VALUE one sets that key, by Hydra's
    override rules on the saved config."""
    saved = dict(files.record["config"])
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(compose.hydra_message(exc)) from None
    for override in parsed:
        check_addresses_the_run(override.key_or_group, override.input_line, saved)
    groups = {o.key_or_group for o in parsed if "." not in o.key_or_group and isinstance(saved[o.key_or_group], dict)}
    to_group = [o for o in parsed if o.key_or_group.split(".")[0] in groups | {"hydra"}]
    saved |= composed_nodes(groups, [o.input_line for o in to_group] + search_path)
    keys = [o.input_line for o in parsed if o not in to_group]
    return load_config(with_overrides(load_config(saved), keys)) if keys else load_config(saved)


def check_addresses_the_run(key: str, given: str, saved: dict) -> None:
    """An override must address the run's config (a key or node of it) or Hydra's search path."""
    if key.split(".")[0] in saved or key == "hydra.searchpath":
        return
    raise UserError(
        f"{given} is not allowed: kd-eval evaluates the run's saved config: give its keys (e.g. dataset.root=DIR, "
        "cache_dir=DIR), a group option for one of its nodes (e.g. dataset=NAME), or hydra.searchpath / --config-dir"
    )


def composed_nodes(groups: set[str], overrides: list[str]) -> dict:
    """The nodes `groups` of kd-run's config composed with `overrides` (nothing when no group is given)."""
    if not groups:
        return {}
    raw = composed(compose.CONFIG_NAME, overrides)
    return {group: OmegaConf.to_container(raw[group], resolve=True) for group in groups}


def with_overrides(cfg: RunConfig, overrides: list[str]) -> dict:
    """`cfg` with `overrides` applied as Hydra applies them to a config (types checked, unknown keys refused)."""
    ConfigStore.instance().store(name=SAVED, node=cfg)
    return OmegaConf.to_container(composed(SAVED, overrides), resolve=True)


def composed(config_name: str, overrides: list[str]):
    """A config composed by Hydra on kd-run's configs; a composition error is one line."""
    compose.register()
    try:
        with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)
    except HydraException as exc:
        raise UserError(compose.hydra_message(exc)) from None


if __name__ == "__main__":
    main()
