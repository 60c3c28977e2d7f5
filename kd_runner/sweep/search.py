"""Hyperparameter search with Hydra's Optuna sweeper (`kd-run hparams_search=alpha_temperature`).

Optuna picks each trial's values as the search runs; a trial is one job that runs `seeds_per_trial` seeds
(`trial_runs`) and returns the mean of `optimize_metric` over them (`trial_value`), so no trial is judged
on one noisy run. The study lives in SQLite in the sweep directory (STUDY_DB, study STUDY_NAME), so an
interrupted search resumes (`resume`); `write_search_outputs` reads it back with Optuna's own reader into
trials.csv, best_params.json and Optuna's own plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from kd_runner.config import RunConfig
from kd_runner.errors import UserError
from kd_runner.status import Status
from kd_runner.store.files import write_csv, write_json

STUDY_DB = "optuna.db"
STUDY_NAME = "kd-search"
SEARCH = "search.json"  # what the study in a sweep directory searches: its overrides, parameters and goal
LOWER_IS_BETTER = ("student_loss", "objective", "logit_gap", "kl_teacher_student")


def check_direction(metric: str, direction: str) -> None:
    """A search must maximize accuracies and minimize losses: refuse the other way round in one line."""
    wanted = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    if str(direction).rsplit(".", 1)[-1].lower() != wanted:
        raise UserError(f"optimize_metric={metric} is to {wanted}: set hydra.sweeper.direction={wanted}")


def trial_runs(cfg: RunConfig, trial_dir: Path) -> list[tuple[RunConfig, Path]]:
    """The runs of one trial: (config, run directory) for seeds seed .. seed+k-1; the trial directory itself
    when k is 1, else its subdirectories seed_<s>."""
    if cfg.seeds_per_trial == 1:
        return [(cfg, trial_dir)]
    seeds = range(cfg.seed, cfg.seed + cfg.seeds_per_trial)
    return [(dataclasses.replace(cfg, seed=s), trial_dir / f"seed_{s}") for s in seeds]


def trial_value(cfg: RunConfig, records: list[dict | None]) -> float:
    """The mean of `optimize_metric` over the trial's completed runs (NaN when none completed: a failed trial)."""
    values = [r["metrics"][cfg.optimize_metric] for r in records if r and r["status"] == Status.COMPLETED]
    return sum(values) / len(values) if values else math.nan


def storage_url(sweep_dir: Path | str) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / STUDY_DB}"


def claim(sweep_dir: Path | str, search: dict) -> None:
    """Make `sweep_dir` the home of this search (`search`: its overrides, parameters and goal): recorded when it
    starts, and a directory holding the study of another search is refused in one line (its trials would
    count toward this one's n_trials and its best)."""
    path = Path(sweep_dir) / SEARCH
    if path.is_file():
        held = json.loads(path.read_text())
        if held != search:
            raise UserError(
                f"hydra.sweep.dir={str(sweep_dir)!r} holds the study of another search ({' '.join(held['overrides'])}"
                "): choose another hydra.sweep.dir, or run that search's very command again to resume it"
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
    storage = optuna.storages.get_storage(storage_url(sweep_dir))
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
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(sweep_dir))


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
