"""The `kd-eval` entry point: evaluate a run's saved student (and its cached teacher) on a validation split.

    kd-eval RUN_DIR_OR_CHECKPOINT [KEY=VALUE ...]

The run's config is composed again from its own overrides (result.json's `overrides`) with the given ones
replacing those of the same key (e.g. `dataset=fashion_mnist`, `dataset.root=...`); the evaluation itself
is kd_runner.evaluate. The metrics are printed and written to RUN_DIR/eval/<weights>-<dataset>.json.
A mistake is one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf

from kd_runner.cli import compose
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import UserError
from kd_runner.evaluate import completed_record, evaluate, run_files
from kd_runner.store.files import write_json

USAGE = "usage: kd-eval RUN_DIR_OR_CHECKPOINT [KEY=VALUE ...]  (e.g. kd-eval outputs/runs/DAY/TIME dataset=mnist)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        if not argv or "=" in argv[0]:
            raise UserError(f"the first argument must be a run directory or a student weights file; {USAGE}")
        run_dir, weights = run_files(argv[0])
        result = evaluate(run_config(run_dir, argv[1:]), run_dir, weights)
        out = run_dir / "eval" / f"{weights.stem}-{result['dataset']}.json"
        write_json(out, result)
    except UserError as exc:
        print(f"kd-eval: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    teacher = (
        "with its teacher from the cache" if result["teacher"] else "teacher not in the cache: student metrics only"
    )
    print(f"kd-eval: {weights} on {result['dataset']} ({result['samples']} validation samples, {teacher})")
    print("  " + "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items()))
    print(f"  written to {out}")


def run_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's config composed from its own overrides, those of the same key replaced by `overrides`."""
    record = completed_record(run_dir)
    if not isinstance(record.get("overrides"), list):
        raise UserError(f"{run_dir}/result.json records no overrides (an older kd-run's): run it again to evaluate it")
    given = {key_of(o) for o in overrides}
    saved = [o for o in record["overrides"] if key_of(o) not in given]
    compose.register()
    try:
        with initialize_config_module(config_module=compose.CONFIG_MODULE, version_base="1.3"):
            raw = hydra_compose("config", overrides=[*saved, *overrides])
    except HydraException as exc:
        raise UserError(compose.hydra_message(exc)) from None
    return load_config(OmegaConf.to_container(raw, resolve=True))


def key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


if __name__ == "__main__":
    main()
