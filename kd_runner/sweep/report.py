"""Sweep plots (PNG), drawn from a sweep directory's summary.csv and curves.csv.

- curves.png: per-epoch student accuracy, student loss and teacher-student logit gap of each sweep point,
  mean over seeds with a ±std band;
- final_accuracy.png: final student accuracy against the swept key (alpha when swept), mean with ±std
  error bars, the teacher's accuracy as a reference line.

The swept keys are the columns of summary.csv before `n`. Figures are drawn with matplotlib's
object-oriented API on the Agg canvas: no display and no global pyplot state.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from kd_runner.errors import UserError
from kd_runner.store.files import atomic_path
from kd_runner.sweep.aggregate import format_value, points

CURVE_PANELS = (
    ("student_acc", "student accuracy"),
    ("student_loss", "student loss (cross-entropy)"),
    ("logit_gap", "logit gap |teacher - student|"),
)
KEY_LABELS = {
    "alpha": "alpha (weight of the hard-label loss; 1 = no distillation)",
    "temperature": "temperature T",
}


def write_plots(sweep_dir: Path | str) -> list[str]:
    """Draw the sweep's figures into `sweep_dir` from its tables; returns the file names written."""
    sweep_dir = Path(sweep_dir)
    summary, curves = (_read_table(sweep_dir, name) for name in ("summary.csv", "curves.csv"))
    keys = list(summary.columns[: list(summary.columns).index("n")])
    summary = summary[summary["n"] > 0]
    written = []
    if len(curves):
        _save(_curves_figure(curves, keys), sweep_dir / "curves.png")
        written.append("curves.png")
    if len(summary):
        _save(_final_accuracy_figure(summary, keys), sweep_dir / "final_accuracy.png")
        written.append("final_accuracy.png")
    return written


def _read_table(sweep_dir: Path, name: str) -> pd.DataFrame:
    path = sweep_dir / name
    if not path.is_file():
        raise UserError(f"{str(path)!r}: no such file; run kd-aggregate {sweep_dir} first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])  # a swept value `null` stays text


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _label(point: dict) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "all runs"


def _swept(keys: list[str]) -> str:
    return " x ".join(keys) if keys else "seeds only"


def _colors(n: int, sequential: bool) -> list:
    if sequential:  # one numeric key: its order reads as a colour gradient
        cmap = colormaps["viridis"]
        return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _seeds_note(n: pd.Series) -> str:
    low, high = int(n.min()), int(n.max())
    return f"mean ± std over {low} seeds" if low == high else f"mean ± std over {low}-{high} seeds"


def _curves_figure(curves: pd.DataFrame, keys: list[str]) -> Figure:
    groups = list(points(curves, keys))
    sequential = len(keys) == 1 and pd.api.types.is_numeric_dtype(curves[keys[0]])
    colors = _colors(len(groups), sequential)
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (metric, title) in zip(axes, CURVE_PANELS):
        for (point, rows), color in zip(groups, colors):
            mean, std = rows[f"{metric}_mean"], rows[f"{metric}_std"].fillna(0.0)
            ax.plot(rows["epoch"], mean, marker="o", markersize=3, color=color, label=_label(point))
            ax.fill_between(rows["epoch"], mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("student epoch")
        ax.set_ylabel(metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Per-epoch validation metrics of the student, sweep over {_swept(keys)} ({_seeds_note(curves['n'])})",
        fontsize=13,
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title=_swept(keys), fontsize=9)
    return fig


def _x_key(summary: pd.DataFrame, keys: list[str]) -> str | None:
    """The key on the x axis: alpha when swept, else the first numeric swept key, else the first one."""
    if "alpha" in keys:
        return "alpha"
    numeric = [k for k in keys if pd.api.types.is_numeric_dtype(summary[k])]
    return (numeric or keys or [None])[0]


def _final_accuracy_figure(summary: pd.DataFrame, keys: list[str]) -> Figure:
    x_key = _x_key(summary, keys)
    series_keys = [k for k in keys if k != x_key]
    numeric_x = x_key is not None and pd.api.types.is_numeric_dtype(summary[x_key])
    categories = [] if x_key is None or numeric_x else sorted(summary[x_key].astype(str).unique())

    def x_of(rows: pd.DataFrame) -> list:
        if x_key is None:
            return [0] * len(rows)
        return list(rows[x_key]) if numeric_x else [categories.index(str(v)) for v in rows[x_key]]

    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.subplots()
    series = list(points(summary, series_keys))
    colors = _colors(len(series), sequential=False)
    teacher = summary["teacher_acc_mean"]
    one_teacher = math.isclose(teacher.min(), teacher.max(), abs_tol=1e-9)
    for (point, rows), color in zip(series, colors):
        rows = rows.sort_values(x_key) if x_key else rows
        ax.errorbar(
            x_of(rows),
            rows["student_acc_mean"],
            yerr=rows["student_acc_std"].fillna(0.0),
            color=color,
            marker="o",
            capsize=4,
            label=f"student ({_label(point)})" if point else "student",
        )
        if not one_teacher:
            ax.plot(
                x_of(rows),
                rows["teacher_acc_mean"],
                color=color,
                linestyle="--",
                marker="x",
                label=f"teacher ({_label(point)})" if point else "teacher",
            )
    if one_teacher:
        ax.axhline(teacher.iloc[0], color="0.35", linestyle="--", label=f"teacher accuracy ({teacher.iloc[0]:.4f})")
    if categories:
        ax.set_xticks(range(len(categories)), categories)
    elif numeric_x and summary[x_key].nunique() <= 12:
        ax.set_xticks(sorted(summary[x_key].unique()))
    if x_key is None:
        ax.set_xticks([0], ["all runs"])
    ax.set_xlabel(KEY_LABELS.get(x_key, x_key or ""))
    ax.set_ylabel("final student accuracy (validation)")
    ax.set_title(f"Final student accuracy, sweep over {_swept(keys)}\n({_seeds_note(summary['n'])}, error bars: ±std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return fig
