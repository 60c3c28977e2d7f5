"""Sweep plots (PNG and SVG), drawn from a sweep directory's summary.csv and curves.csv.

- curves: per-epoch student accuracy, student loss and teacher-student logit gap of each sweep point,
  mean over seeds with a ±std band;
- final_accuracy: final student accuracy against the swept key (alpha when swept), mean with ±std
  error bars, the teacher's accuracy as a reference line;
- accuracy_gain: student_acc_gain (over the alpha=1 baseline) against alpha, when the table has it, with
  its 95% CI and a star where that CI excludes zero (at least 3 seeds and a CI of some width).

Made to go into a paper as they are: a short title, the statistics (what the bands and bars are, over how
many seeds) in a caption under the figure, accuracies in percent, axes labelled in words, and colours that
stay visible in print and with colour-blindness (the Okabe-Ito palette without its yellow, or the dark part
of viridis for one ordered key). The swept keys are the columns of summary.csv before `n`. Figures are
drawn with matplotlib's object-oriented API on the Agg canvas: no display and no global pyplot state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from kd_runner.errors import UserError
from kd_runner.store.files import atomic_path
from kd_runner.sweep.aggregate import GAIN, format_value, points, significant

CURVE_PANELS = (  # metric, title, axis label
    ("student_acc", "Accuracy", "validation accuracy (%)"),
    ("student_loss", "Loss", "cross-entropy on the true labels"),
    ("logit_gap", "Logit gap", "mean |teacher - student| logit"),
)
PERCENT = ("student_acc", "teacher_acc", f"{GAIN}_mean")  # fractions, drawn in percent
KEY_LABELS = {
    "alpha": "alpha (weight of the hard-label loss; 1 = no distillation)",
    "temperature": "temperature T",
    "soft_loss": "soft loss",
    "seed": "seed",
}
# Okabe-Ito without its yellow, which nearly vanishes on white paper (each keeps a contrast >= 2.2:1 to white)
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
VIRIDIS_END = 0.7  # viridis beyond it is light green to yellow: too faint for a line printed on white
LINE_STYLES = ("-", "--", ":", "-.")  # after the 7 colours, the series differ by line style too
BAND_ALPHA = 0.25
CAPTION_SIZE = 9


def write_plots(sweep_dir: Path | str) -> list[str]:
    """Draw the sweep's figures into `sweep_dir` from its tables; returns the file names written."""
    return [name for stem, fig in figures(sweep_dir).items() for name in _save(fig, Path(sweep_dir), stem)]


def figures(sweep_dir: Path | str) -> dict[str, Figure]:
    """The sweep's figures by file stem, drawn from the tables in `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    summary = _read_table(sweep_dir, "summary.csv", ("n", "student_acc_mean", "student_acc_std", "teacher_acc_mean"))
    curves = _read_table(sweep_dir, "curves.csv", ("epoch",))
    keys = list(summary.columns[: list(summary.columns).index("n")])
    summary = summary[summary["n"] > 0]
    drawn = {}
    if len(curves):
        drawn["curves"] = _curves_figure(curves, keys)
    if len(summary):
        drawn["final_accuracy"] = _final_accuracy_figure(summary, keys)
    if f"{GAIN}_mean" in summary and summary[f"{GAIN}_mean"].notna().any():
        drawn["accuracy_gain"] = _gain_figure(summary, keys)
    return drawn


def write_search_plots(study, out_dir: Path | str) -> list[str]:
    """A search's figures, drawn by Optuna's own matplotlib plots from its `study` (a search's points are
    its trials, one value each, so the sweep plots would draw a line per sampled value): the optimization
    history, each parameter's slice, and with two parameters or more their contour. (The sweeper's Optuna 2
    cannot draw its importances and parallel coordinates with this matplotlib: they are left out.) The file
    names written."""
    import warnings

    import numpy as np
    import optuna
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as optuna_plots

    plots = {"optimization_history": optuna_plots.plot_optimization_history, "slice": optuna_plots.plot_slice}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len({name for t in complete for name in t.params}) > 1 and len(complete) > 2:
        plots["contour"] = optuna_plots.plot_contour
    names = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its plots warn that they differ from its plotly ones
    try:
        for stem, plot in plots.items():
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fig = np.ravel(plot(study))[0].figure
            try:
                names += _save(fig, Path(out_dir), stem)
            finally:
                pyplot.close(fig)  # Optuna draws through pyplot: free its figure
    finally:
        optuna.logging.set_verbosity(verbosity)
    return names


def _read_table(sweep_dir: Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A table kd-aggregate wrote; a UserError naming the file when it is missing, empty or lacks `columns`."""
    path = sweep_dir / name
    again = f"run kd-aggregate {sweep_dir} (again) to write it"
    if not path.is_file():
        raise UserError(f"{str(path)!r}: no such file; run kd-aggregate {sweep_dir} first")
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a swept value `null` stays text
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{str(path)!r} is not a table kd-aggregate wrote ({type(exc).__name__}); {again}") from None
    missing = [c for c in columns if c not in table]
    if missing:
        raise UserError(f"{str(path)!r} has no column {missing[0]!r}, so it is not a table of kd-aggregate; {again}")
    return table


def _save(fig: Figure, sweep_dir: Path, stem: str) -> list[str]:
    """The figure as `stem`.png and `stem`.svg; returns the file names."""
    names = [f"{stem}.png", f"{stem}.svg"]
    for name in names:
        with atomic_path(sweep_dir / name) as tmp:
            fig.savefig(tmp, format=name.rsplit(".", 1)[1], dpi=120, bbox_inches="tight")
    return names


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


def _key_label(key: str | None) -> str:
    """A swept key in words: its own label, else the key with its dots and underscores as spaces."""
    if key is None:
        return ""
    return KEY_LABELS.get(key, key.replace(".", " ").replace("_", " "))


def _label(point: dict) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "all runs"


def _swept(keys: list[str]) -> str:
    return " x ".join(keys) if keys else "seeds only"


def _colors(n: int, sequential: bool) -> list:
    if sequential:  # one numeric key: its order reads as a colour gradient, dark to mid
        cmap = colormaps["viridis"]
        return [cmap(VIRIDIS_END * i / max(n - 1, 1)) for i in range(n)]
    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]


def _line_style(i: int) -> str:
    return LINE_STYLES[i // len(OKABE_ITO) % len(LINE_STYLES)]


def _seeds(n: pd.Series) -> str:
    """How many seeds each point's statistics are over: "3 seeds", "1 seed", "2-3 seeds"."""
    low, high = int(n.min()), int(n.max())
    if low == high:
        return f"{low} seed" if low == 1 else f"{low} seeds"
    return f"{low}-{high} seeds"


def _caption(fig: Figure, *sentences: str) -> None:
    """The statistics in words under the figure, where a paper's caption goes (gid "caption")."""
    fig.text(0.0, 0.0, " ".join(sentences), ha="left", va="top", fontsize=CAPTION_SIZE, wrap=True, gid="caption")


def _legend_title(keys: list[str]) -> str:
    return _key_label(keys[0]) if len(keys) == 1 else ", ".join(keys) or None


def _curves_figure(curves: pd.DataFrame, keys: list[str]) -> Figure:
    groups = list(points(curves, keys))
    sequential = len(keys) == 1 and pd.api.types.is_numeric_dtype(curves[keys[0]])
    colors = _colors(len(groups), sequential)
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (metric, title, axis_label) in zip(axes, CURVE_PANELS):
        for i, ((point, rows), color) in enumerate(zip(groups, colors)):
            mean, std = rows[f"{metric}_mean"] * _scale(metric), rows[f"{metric}_std"].fillna(0.0) * _scale(metric)
            ax.plot(
                rows["epoch"],
                mean,
                marker="o",
                markersize=3,
                color=color,
                linestyle=_line_style(i),
                label=_short_label(point),
            )
            ax.fill_between(rows["epoch"], mean - std, mean + std, color=color, alpha=BAND_ALPHA, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("student epoch")
        ax.set_ylabel(axis_label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.suptitle("Student validation metrics per epoch", fontsize=13)
    handles, labels = axes[0].get_legend_handles_labels()
    if keys:
        fig.legend(handles, labels, loc="outside right upper", title=_legend_title(keys), fontsize=9)
    _caption(fig, f"Lines: mean over {_seeds(curves['n'])} per point; shaded: ± 1 std.", _swept_sentence(keys))
    return fig


def _short_label(point: dict) -> str:
    """A legend entry: the value alone when one key is swept (the legend's title names it)."""
    if len(point) == 1:
        return format_value(next(iter(point.values())))
    return _label(point)


def _swept_sentence(keys: list[str]) -> str:
    return f"Sweep over {_swept(keys)}." if keys else "One configuration, several seeds."


@dataclass
class XAxis:
    """The swept key on the x axis of the summary plots (alpha when swept, else the first numeric swept key,
    else the first one) and where each sweep point goes on it."""

    key: str | None
    numeric: bool
    categories: list[str]

    @classmethod
    def of(cls, summary: pd.DataFrame, keys: list[str]) -> XAxis:
        numeric_keys = [k for k in keys if pd.api.types.is_numeric_dtype(summary[k])]
        key = "alpha" if "alpha" in keys else (numeric_keys or keys or [None])[0]
        numeric = key is not None and pd.api.types.is_numeric_dtype(summary[key])
        categories = [] if key is None or numeric else sorted(summary[key].astype(str).unique())
        return cls(key, numeric, categories)

    def positions(self, rows: pd.DataFrame) -> list:
        if self.key is None:
            return [0] * len(rows)
        return list(rows[self.key]) if self.numeric else [self.categories.index(str(v)) for v in rows[self.key]]

    def series(self, summary: pd.DataFrame, keys: list[str]):
        """(point, rows sorted along the axis) for each combination of the other swept keys."""
        for point, rows in points(summary, [k for k in keys if k != self.key]):
            yield point, (rows.sort_values(self.key) if self.key else rows)

    def draw(self, ax, summary: pd.DataFrame) -> None:
        """Ticks (every value when there are few) and the key in words."""
        if self.categories:
            ax.set_xticks(range(len(self.categories)), self.categories)
        elif self.numeric and summary[self.key].nunique() <= 12:
            ax.set_xticks(sorted(summary[self.key].unique()))
        if self.key is None:
            ax.set_xticks([0], ["all runs"])
        ax.set_xlabel(_key_label(self.key))


def _final_accuracy_figure(summary: pd.DataFrame, keys: list[str]) -> Figure:
    x = XAxis.of(summary, keys)
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.subplots()
    series = list(x.series(summary, keys))
    teacher = summary["teacher_acc_mean"] * 100
    one_teacher = math.isclose(teacher.min(), teacher.max(), abs_tol=1e-7)
    for i, ((point, rows), color) in enumerate(zip(series, _colors(len(series), sequential=False))):
        ax.errorbar(
            x.positions(rows),
            rows["student_acc_mean"] * 100,
            yerr=rows["student_acc_std"].fillna(0.0) * 100,
            color=color,
            linestyle=_line_style(i),
            marker="o",
            capsize=4,
            label=f"student, {_label(point)}" if point else "student",
        )
        if not one_teacher:
            ax.plot(
                x.positions(rows),
                rows["teacher_acc_mean"] * 100,
                color=color,
                linestyle="--",
                marker="x",
                label=f"teacher, {_label(point)}" if point else "teacher",
            )
    if one_teacher:
        ax.axhline(teacher.iloc[0], color="0.35", linestyle="--", label=f"teacher ({teacher.iloc[0]:.1f}%)")
    x.draw(ax, summary)
    ax.set_ylabel("final student accuracy on validation (%)")
    ax.set_title("Final student accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    teacher_line = "Dashed: the teacher's accuracy." if one_teacher else "Dashed, crosses: each point's teacher."
    _caption(fig, f"Mean ± 1 std over {_seeds(summary['n'])} per point.", teacher_line, _swept_sentence(keys))
    return fig


def _gain_figure(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """The gain over alpha=1 (paired by seed) in percentage points against alpha, with its 95% CI; a star
    above each point whose CI excludes zero."""
    x = XAxis.of(summary, keys)
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.subplots()
    series = list(x.series(summary, keys))
    for i, ((point, rows), color) in enumerate(zip(series, _colors(len(series), sequential=False))):
        mean = rows[f"{GAIN}_mean"] * 100
        ci = [mean - rows[f"{GAIN}_ci95_low"] * 100, rows[f"{GAIN}_ci95_high"] * 100 - mean]
        ax.errorbar(
            x.positions(rows),
            mean,
            yerr=ci,
            color=color,
            linestyle=_line_style(i),
            marker="o",
            capsize=3,
            label=_label(point) if point else "student",
        )
        for position, row in zip(x.positions(rows), rows.to_dict("records")):
            if significant(row):
                top = max(row[f"{GAIN}_ci95_high"], row[f"{GAIN}_mean"]) * 100
                ax.annotate("*", (position, top), textcoords="offset points", xytext=(0, 2), ha="center", gid="star")
    ax.axhline(0.0, color="0.35", linestyle="--", label="no distillation (alpha = 1)")
    x.draw(ax, summary)
    ax.set_ylabel("accuracy gain over alpha = 1 (points)")
    ax.set_title("Gain from distillation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    n = summary.loc[summary[f"{GAIN}_mean"].notna(), f"{GAIN}_n_pairs"]
    _caption(
        fig,
        "Mean paired difference of final accuracy to alpha = 1 (same seeds), in percentage points; error bars: "
        f"95% CI over {_seeds(n)}; *: the CI excludes zero (at least 3 seeds).",
        _swept_sentence(keys),
    )
    return fig
