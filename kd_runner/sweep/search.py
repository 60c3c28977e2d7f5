"""Hyperparameter search with Hydra's Optuna sweeper (`kd-run hparams_search=alpha_temperature`).

Optuna picks each trial's values as the search runs; a trial is one job that runs `seeds_per_trial` seeds
(`trial_runs`) and returns the mean of `optimize_metric` over them (`trial_value`), so no trial is judged
on one noisy run. The study lives in SQLite in the sweep directory (STUDY_DB, study STUDY_NAME), so an
interrupted search resumes (`resume`); `write_search_outputs` reads it back with Optuna's own reader into
trials.csv, best_params.json and Optuna's own plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from kd_runner.config import RunConfig
from kd_runner.errors import UserError, one_line
from kd_runner.status import Status
from kd_runner.store.files import write_csv, write_json

STUDY_DB = "optuna.db"
STUDY_NAME = "kd-search"
SEARCH = "search.json"  # what the study in a sweep directory searches: its overrides, parameters and goal
LOWER_IS_BETTER = ("student_loss", "objective", "logit_gap", "kl_teacher_student")
NAME_LIMIT = 120  # bytes of a trial directory's name (file systems allow 255), digest included
NAME_CHARS = r"[^A-Za-z0-9=,._+~-]"  # what else a trial directory's name holds is replaced


def check_direction(metric: str, direction: str) -> None:
    """A search must maximize accuracies and minimize losses: refuse the other way round in one line."""
    wanted = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    if str(direction).rsplit(".", 1)[-1].lower() != wanted:
        raise UserError(f"optimize_metric={metric} is to {wanted}: set hydra.sweeper.direction={wanted}")


def trial_dir_name(values: str) -> str:
    """A trial directory's name from its overrides as Hydra writes them (`hydra.job.override_dirname`, e.g.
    `alpha=0.5,temperature=4`): that text when it is a plain short name, the same for every run of those
    values (a resumed search finds its trials). Otherwise (a `/` in `cache_dir=/abs/path` would nest the
    directories, many overrides would pass the file system's 255 bytes) the text with other characters
    replaced and cut, and a digest of the whole text, so that no two trials share a directory."""
    safe = re.sub(NAME_CHARS, "_", values)
    if safe == values and len(values) <= NAME_LIMIT and values.strip(".") and not values.startswith("-"):
        return values
    return f"{safe[: NAME_LIMIT - 17]}-{hashlib.sha256(values.encode()).hexdigest()[:16]}"


def trial_runs(cfg: RunConfig, trial_dir: Path) -> list[tuple[RunConfig, Path]]:
    """The runs of one trial: (config, run directory) for seeds seed .. seed+k-1; the trial directory itself
    when k is 1, else its subdirectories seed_<s>."""
    if cfg.seeds_per_trial == 1:
        return [(cfg, trial_dir)]
    seeds = range(cfg.seed, cfg.seed + cfg.seeds_per_trial)
    return [(dataclasses.replace(cfg, seed=s), trial_dir / f"seed_{s}") for s in seeds]


class TrialFailed(Exception):
    """A trial whose runs did not all complete. Raised by the trial's job, so that Hydra's Optuna sweeper
    records it as FAIL in the study and goes on (kd-run sets its max_failure_rate to 1): a value from the
    seeds that survived would flatter a setting that fails or diverges."""


def trial_value(cfg: RunConfig, records: list[dict]) -> float:
    """The mean of `optimize_metric` over the trial's runs; TrialFailed when one of them did not complete."""
    missed = [r["status"] for r in records if r["status"] != Status.COMPLETED]
    if missed:
        raise TrialFailed(f"{len(missed)} of its {len(records)} runs did not complete ({', '.join(missed)})")
    return sum(r["metrics"][cfg.optimize_metric] for r in records) / len(records)


def completed_trials(sweep_dir: Path | str) -> int:
    """How many trials of the study in `sweep_dir` completed."""
    return len([t for t in _load(sweep_dir).trials if t.state.name == "COMPLETE"])


def storage_url(sweep_dir: Path | str) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / STUDY_DB}"


def claim(sweep_dir: Path | str, search: dict) -> None:
    """Make `sweep_dir` the home of this search (`search`: its overrides, parameters and goal): recorded when it
    starts, and a directory holding the study of another search is refused in one line (its trials would
    count toward this one's n_trials and its best)."""
    path = Path(sweep_dir) / SEARCH
    if path.is_file():
        try:
            held = json.loads(path.read_text())
            command = " ".join(held["overrides"])
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{path} is not what kd-run wrote (changed from outside): choose another hydra.sweep.dir, or delete "
                f"it with {STUDY_DB} to start that search over"
            ) from None
        if held != search:
            raise UserError(
                f"hydra.sweep.dir={str(sweep_dir)!r} holds the study of another search ({command}): choose another "
                "hydra.sweep.dir, or run that search's very command again to resume it"
            )
        return
    write_json(path, search)


def resume(sweep_dir: Path | str, n_trials: int) -> tuple[int, int]:
    """How many trials a search into `sweep_dir` has left to complete (all `n_trials` when it is new), and
    how many it has run (the sampler's seed is offset by them, so as not to draw the same values again). The
    trials a stopped search left running are marked failed; those that had started are queued again, so
    the resumed search runs them first, in the same trial directories (where finished seeds are kept and
    an interrupted run resumes from its checkpoint). Optuna's INFO lines are silenced (Hydra logs trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (Path(sweep_dir) / STUDY_DB).is_file():
        return n_trials, 0
    study = _load(sweep_dir)
    storage = optuna.storages.get_storage(storage_url(sweep_dir))  # readable: the study loaded
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state(
            storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), optuna.trial.TrialState.FAIL
        )
        if _started(sweep_dir, trial.params):
            study.enqueue_trial(trial.params)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(0, n_trials - len(done)), len(study.trials)


def _started(sweep_dir: Path | str, params: dict) -> bool:
    """Whether a trial of these values has a run (a trial refused as it started has none)."""
    wanted = {f"{name}={value}" for name, value in params.items()}  # as the Optuna sweeper writes them
    results = [*Path(sweep_dir).glob("*/result.json"), *Path(sweep_dir).glob("*/seed_*/result.json")]
    return any(wanted <= set(json.loads(path.read_text()).get("overrides", [])) for path in results)


def _load(sweep_dir: Path | str):
    """The study in `sweep_dir`; one line when its file holds none (random bytes, another program's database,
    a study of another name or Optuna version)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(sweep_dir))
    except (SQLAlchemyError, KeyError, RuntimeError) as exc:
        why = one_line(getattr(exc, "orig", None) or exc, 80)  # SQLAlchemy's own error wraps the database's
        raise UserError(
            f"{Path(sweep_dir) / STUDY_DB} holds no Optuna study {STUDY_NAME!r} ({why}): delete it "
            "to start the search over, or choose another hydra.sweep.dir"
        ) from None


def write_search_outputs(sweep_dir: Path | str, out_dir: Path | str) -> list[str]:
    """trials.csv (one row per trial: number, state, value, params), best_params.json and Optuna's plots of
    the study (report.write_search_plots) from the study in `sweep_dir`; the names written."""
    from kd_runner.sweep import report  # imported only to plot: kd-run starts without matplotlib

    study = _load(sweep_dir)
    out_dir = Path(out_dir)
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "datetime_start", "duration"))
    write_csv(out_dir / "trials.csv", table)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        return ["trials.csv"]
    best = study.best_trial
    write_json(out_dir / "best_params.json", {"trial": best.number, "value": best.value, "params": best.params})
    return ["trials.csv", "best_params.json", *report.write_search_plots(study, out_dir)]
