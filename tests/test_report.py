"""The sweep's figures as a paper takes them, read back from the figure objects and the files: short
titles, the statistics in a caption, colours visible in print, a star only where a gain is significant;
a search drawn by Optuna's own plots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port
from matplotlib import colors
from test_aggregate import grid_sweep, make_job

from kd_runner.sweep import aggregate, report, search


def caption(fig) -> str:
    (text,) = [t.get_text() for t in fig.texts if t.get_gid() == "caption"]
    return text


def titles(fig) -> list[str]:
    return [t for t in (fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)) if t]


def stars(fig) -> int:
    return sum(1 for ax in fig.axes for t in ax.texts if t.get_gid() == "star")


def contrast_to_white(color) -> float:
    """WCAG's contrast ratio of `color` on white paper."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in colors.to_rgb(color)]
    return 1.05 / (0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2] + 0.05)


def drawn(sweep) -> dict:
    aggregate.aggregate([sweep], sweep)
    return report.figures(sweep)


def test_titles_are_short_and_the_statistics_are_in_the_caption(tmp_path):
    grid_sweep(tmp_path, {(0, 2): [0.8, 0.84, 0.83], (0, 4): [0.9, 0.92, 0.9], (1, 2): [0.7, 0.72, 0.7]})
    figs = drawn(tmp_path)
    assert titles(figs["final_accuracy"]) == ["Final student accuracy"]
    assert titles(figs["accuracy_gain"]) == ["Gain from distillation"]
    assert titles(figs["curves"]) == ["Student validation metrics per epoch", "Accuracy", "Loss", "Logit gap"]
    assert caption(figs["final_accuracy"]).startswith("Mean ± 1 std over 3 seeds per point.")
    assert "95% CI over 3 seeds" in caption(figs["accuracy_gain"])
    assert "Sweep over alpha x temperature." in caption(figs["curves"])
    report.write_plots(tmp_path)  # the files carry the same words (matplotlib writes each text in the SVG)
    svg = (tmp_path / "final_accuracy.svg").read_text()
    assert "<!-- Final student accuracy -->" in svg and "Mean ± 1 std over 3 seeds per point." in svg


def test_one_seed_is_said_in_the_singular(tmp_path):
    for num, alpha in enumerate((0.5, 1)):
        make_job(tmp_path, num, [f"alpha={alpha}", "seed=0"], 0, 0.8)
    figs = drawn(tmp_path)
    assert "over 1 seed per point" in caption(figs["final_accuracy"])
    assert "1 seeds" not in caption(figs["curves"])


def test_every_line_stays_visible_on_white_paper(tmp_path):
    alphas = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1]  # one ordered key: a colour gradient
    grid_sweep(tmp_path / "one", {(a, 2): [0.8, 0.81] for a in alphas})
    grid_sweep(tmp_path / "many", {(a, t): [0.8, 0.81] for a in (0, 1) for t in range(1, 9)})
    for sweep in ("one", "many"):
        figs = drawn(tmp_path / sweep).values()
        lines = {line.get_color() for fig in figs for ax in fig.axes for line in ax.get_lines()}
        assert len(lines) >= 8
        assert min(map(contrast_to_white, lines)) >= 2.2, sweep


@pytest.mark.parametrize(
    ("seeds", "starred"),
    [
        ({0.5: [0.9, 0.95, 0.92], 1: [0.7, 0.71, 0.7]}, 1),  # 3 seeds, CI above zero
        ({0.5: [0.9, 0.95], 1: [0.7, 0.71]}, 0),  # 2 seeds: no star however far the CI lies from zero
        ({0.5: [0.8, 0.81, 0.82], 1: [0.7, 0.71, 0.72]}, 0),  # 3 equal differences: a CI of no width
        ({0.5: [0.7, 0.75, 0.66], 1: [0.7, 0.71, 0.7]}, 0),  # a CI across zero
    ],
)
def test_a_star_only_where_the_gain_is_significant(seeds, starred, tmp_path):
    grid_sweep(tmp_path, {(alpha, 2): accs for alpha, accs in seeds.items()})
    fig = drawn(tmp_path)["accuracy_gain"]
    assert stars(fig) == starred
    markdown = (tmp_path / "summary.md").read_text()
    assert len(re.findall(r"seeds\) \*", markdown)) == starred  # summary.md's star follows the same rule


def test_a_search_is_drawn_by_optunas_own_plots(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("alpha", 0, 1) - t.suggest_float("temperature", 1, 8) / 100, n_trials=6)
    names = report.write_search_plots(study, tmp_path)
    stems = ("optimization_history", "slice", "contour")
    assert names == [f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")]
    assert "Optimization History Plot" in (tmp_path / "optimization_history.svg").read_text()
    assert "temperature" in (tmp_path / "slice.svg").read_text()


@pytest.mark.skipif(
    not os.environ.get("KD_DASHBOARD_PYTHON"),
    reason="KD_DASHBOARD_PYTHON names a separate environment's Python with optuna-dashboard (docs/sweeps.md)",
)
def test_optuna_dashboard_opens_an_upgraded_copy_of_the_study(tmp_path):
    """docs/sweeps.md's way to the current optuna-dashboard, as written: a copy of the study upgraded by the
    separate environment's Optuna, served on 127.0.0.1; the original stays readable by kd-run's Optuna 2."""
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(
        study_name=search.STUDY_NAME, storage=search.storage_url(tmp_path), direction="maximize"
    )  # what the sweeper writes: Optuna 2's RDB storage in SQLite
    study.optimize(lambda t: t.suggest_float("alpha", 0, 1), n_trials=3)
    tools = Path(os.environ["KD_DASHBOARD_PYTHON"]).parent
    copy = tmp_path / "study-copy.db"
    shutil.copy(tmp_path / search.STUDY_DB, copy)
    subprocess.run([tools / "optuna", "storage", "upgrade", "--storage", f"sqlite:///{copy}"], check=True)
    port = free_port()
    server = subprocess.Popen(
        [tools / "optuna-dashboard", "--host", "127.0.0.1", "--port", str(port), f"sqlite:///{copy}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = json.loads(fetch(f"http://127.0.0.1:{port}/api/studies/1", server))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert served["name"] == search.STUDY_NAME and len(served["trials"]) == 3
    assert len(optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage_url(tmp_path)).trials) == 3


def fetch(url: str, server: subprocess.Popen, timeout: float = 60) -> str:
    """The body at `url` once the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not answer"
            time.sleep(0.5)


def test_a_timm_network_swept_is_named_by_its_architecture_in_tables_and_plots(tmp_path):
    for num, (teacher, arch) in enumerate([("timm", "resnet50d"), ("cnn", None)]):
        make_job(tmp_path, num, [f"teacher={teacher}", "seed=0"], 0, 0.8 + 0.1 * num)
        result = json.loads((tmp_path / str(num) / "result.json").read_text())
        result["config"]["teacher"] = {"name": teacher, "model": {"_target_": None, "arch": arch}}
        (tmp_path / str(num) / "result.json").write_text(json.dumps(result))
    tables = aggregate.aggregate([tmp_path], tmp_path)
    assert sorted(tables.runs["teacher"]) == ["cnn", "timm/resnet50d"]
    fig = report.figures(tmp_path)["final_accuracy"]
    assert set(fig.axes[0].get_xticklabels()[i].get_text() for i in range(2)) == {"cnn", "timm/resnet50d"}
