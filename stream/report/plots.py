"""PNG figures of a run (matplotlib ``Figure`` objects with the Agg canvas; no pyplot state)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stream.report.measures import CHI2_1DF_01, CHI2_1DF_05
from stream.report.style import SHIFT_COLOUR
from stream.report.tables import ALL_EVENTS, COHORT_EVENTS

DAY_S = 86_400.0
Styles = dict[str, dict[str, Any]]
METRIC_LABELS = {"hr@10": "HR@10", "ndcg@10": "NDCG@10", "mrr": "MRR"}


def dates(seconds: np.ndarray | pl.Series) -> np.ndarray:
    return (np.asarray(seconds, dtype=np.float64) * 1000).astype("datetime64[ms]")


def with_gaps(x: np.ndarray, y: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN where windows are missing (no or too few events), so the line breaks."""
    cut = np.flatnonzero(np.diff(x) > 1.5 * step) + 1
    return np.insert(x.astype(float), cut, np.nan), np.insert(y.astype(float), cut, np.nan)


def _date_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


@dataclass(frozen=True)
class Marks:
    """What every event-time axis marks: injected shifts and the pretraining period."""

    shifts: pl.DataFrame  # shift_time, kind, width, n_users (``build.shifts_of``)
    pretrain: tuple[float, float] | None = None  # (first event, cutoff): checkpoints' data
    until: float | None = None  # event-time axes end here (a sparse tail left out)


def decorate(ax: Axes, marks: Marks, label: bool = False) -> None:
    """Injected shifts: a red dashed line at t*, a band t* +- 2 width for gradual ones; the
    pretraining period: a grey band. Also ends the axis at ``marks.until``."""
    if marks.until is not None:
        ax.set_xlim(right=dates(np.array([marks.until]))[0])
    if marks.pretrain is not None:
        lo, hi = dates(np.array(marks.pretrain))
        text = "pretraining data (in-sample)" if label else None
        ax.axvspan(lo, hi, color="#888888", alpha=0.13, lw=0, label=text)
    for row in marks.shifts.iter_rows(named=True):
        at = row["shift_time"]
        text = f"injected shift ({row['kind']}, {row['n_users']} users)" if label else None
        ax.axvline(dates(np.array([at]))[0], color=SHIFT_COLOUR, linestyle="--", lw=1.3, label=text)
        if row["width"] > 0:
            lo, hi = dates(np.array([at - 2 * row["width"], at + 2 * row["width"]]))
            ax.axvspan(lo, hi, color=SHIFT_COLOUR, alpha=0.12, lw=0)
        label = False


def flag_panel(ax: Axes, flags: pl.DataFrame, styles: Styles, marks: Marks) -> None:
    """One row per model that flags any window, with the flagged windows (frozen: hatched)."""
    rows = [m for m in styles if m in set(flags["model"].to_list())]
    for position, model in enumerate(rows):
        part = flags.filter(pl.col("model") == model)
        starts = dates(part["window_start"])
        widths = dates(part["window_end"]) - starts
        frozen = styles[model]["linestyle"] != "-"
        ax.broken_barh(
            list(zip(starts, widths, strict=True)),
            (position - 0.35, 0.7),
            facecolors="white" if frozen else styles[model]["color"],
            edgecolors=styles[model]["color"],
            hatch="////" if frozen else None,
        )
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_ylabel("flagged\nwindows", fontsize=9)
    if not rows:
        ax.text(
            0.5,
            0.5,
            "no window flagged by any model",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.grid(alpha=0.3, axis="x")
    decorate(ax, marks)


def metric_figure(
    windows: pl.DataFrame,
    metric: str,
    styles: Styles,
    marks: Marks,
    flags: pl.DataFrame,
    window_label: str,
    half_life_label: str,
    min_events: int,
    path: Path,
) -> Path:
    """Windowed, fading and cumulative ``metric`` per model over event time; flagged windows;
    events per window."""
    name = METRIC_LABELS.get(metric, metric)
    n_flag_rows = max(1, flags["model"].n_unique())
    fig = Figure(figsize=(11, 11 + 0.2 * n_flag_rows), layout="constrained")
    axes = fig.subplots(5, 1, sharex=True, height_ratios=[3, 3, 2, 0.3 + 0.25 * n_flag_rows, 1.2])
    panels = [
        (metric, f"{name} per {window_label} window\n(windows with < {min_events} events hidden)"),
        (f"fading_{metric}", f"{name}, event-time fading\n(half-life {half_life_label})"),
        (f"cum_{metric}", f"{name}, cumulative"),
    ]
    for ax, (column, ylabel) in zip(axes, panels, strict=False):
        for model, style in styles.items():
            rows = windows.filter(pl.col("model") == model).sort("window_start")
            if rows.height == 0:
                continue
            values = rows[column].to_numpy().astype(float)
            # too few events for a stable value: this window's own, or all so far
            enough = rows["n_events" if column == metric else "cum_n_events"].to_numpy()
            values = np.where(enough >= min_events, values, np.nan)
            middle = (rows["window_start"] + rows["window_end"]).to_numpy() / 2
            size = (rows["window_end"] - rows["window_start"]).to_numpy().max()
            x, y = with_gaps(middle, values, size) if column == metric else (middle, values)
            ax.plot(dates(x), y, lw=1.3, **style)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        decorate(ax, marks, label=ax is axes[0])
    flag_panel(axes[3], flags, styles, marks)
    counts = windows.filter(pl.col("model") == windows["model"][0]).sort("window_start")
    axes[4].bar(
        dates(counts["window_start"]),
        counts["n_events"].to_numpy(),
        width=(counts["window_end"] - counts["window_start"]).to_numpy() / DAY_S,
        align="edge",
        color="#555555",
    )
    axes[4].set_ylabel(f"events per\n{window_label}\nwindow")
    axes[4].set_xlabel(
        "event time (date, UTC)"
        + ("" if marks.until is None else "; the sparse tail after the axis end is not shown")
    )
    _date_axis(axes[4])
    decorate(axes[4], marks)
    handles, labels = axes[0].get_legend_handles_labels()
    # the title rides on the legend: constrained layout stacks a suptitle on top of it
    fig.legend(
        handles,
        labels,
        loc="outside upper center",
        ncol=min(4, len(labels)),
        frameon=False,
        title=f"{name} over event time, one line per model",
        title_fontsize=14,
    )
    return _save(fig, path)


def mcnemar_figure(series: pl.DataFrame, styles: Styles, marks: Marks, n: int, path: Path) -> Path:
    """Signed McNemar (adaptive vs its frozen twin, hits@10) over a sliding window, per pair."""
    pairs = series.select("model", "frozen").unique(maintain_order=True).rows()
    fig = Figure(figsize=(13, 2.8 * max(1, len(pairs)) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, len(pairs)), 1, sharex=True, squeeze=False)[:, 0])
    for ax, (model, frozen) in zip(axes, pairs, strict=False):
        for subset, colour, width in (
            (ALL_EVENTS, styles[model]["color"], 1.2),
            (COHORT_EVENTS, "black", 0.9),
        ):
            rows = series.filter((pl.col("model") == model) & (pl.col("subset") == subset))
            if rows.height:
                ax.plot(
                    dates(rows["time"]),
                    rows["statistic"].to_numpy(),
                    color=colour,
                    lw=width,
                    alpha=1.0 if subset == ALL_EVENTS else 0.75,
                    label=f"M, {subset}",
                )
        for level, dash in ((CHI2_1DF_05, ":"), (CHI2_1DF_01, "--")):
            for sign in (1, -1):
                ax.axhline(
                    sign * level,
                    color="black",
                    lw=0.9,
                    linestyle=dash,
                    label=(
                        f"±{level} (p < {0.05 if level == CHI2_1DF_05 else 0.01})"
                        if sign == 1
                        else None
                    ),
                )
        ax.axhline(0, color="grey", lw=0.6)
        decorate(ax, marks, label=True)
        ax.set_ylabel("signed McNemar M\n(+: adaptive better)")
        ax.set_title(f"{model} vs its frozen twin {frozen}: last {n:,} paired events, hits@10")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if not pairs:
        axes[0].text(
            0.5,
            0.5,
            "no adaptive model with a frozen twin in this run",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    axes[-1].set_xlabel("event time (date, UTC) of the window's last event")
    _date_axis(axes[-1])
    return _save(fig, path)


def system_figure(series: pl.DataFrame, styles: Styles, path: Path) -> Path:
    """Throughput (events/s) and latency p50 / p99 over processing (wall-clock) time."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    top = series["latency_p99_ms"].max() if series.height else None
    seconds = isinstance(top, float) and top > 10_000  # long queues read better in seconds
    unit, scale = ("s", 1000.0) if seconds else ("ms", 1.0)
    columns = [
        ("events_per_s", "throughput\n(events/s)", 1.0),
        ("latency_p50_ms", f"latency p50 ({unit})\nproduced → written", scale),
        ("latency_p99_ms", f"latency p99 ({unit})\nproduced → written", scale),
    ]
    for ax, (column, ylabel, divide) in zip(axes, columns, strict=True):
        for model, style in styles.items():
            rows = series.filter(pl.col("model") == model)
            if rows.height and rows[column].null_count() < rows.height:
                values = rows[column].to_numpy() / divide
                ax.plot(rows["elapsed_s"], values, marker=".", ms=3, lw=1.1, **style)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    if series.height == 0 or series["latency_p50_ms"].null_count() == series.height:
        axes[1].text(
            0.5,
            0.5,
            "no latency recorded (offline run?)",
            ha="center",
            va="center",
            transform=axes[1].transAxes,
        )
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[-1].set_xlabel("processing time since the first event was produced (s, wall clock)")
    fig.suptitle("Throughput and latency over processing time", fontsize=14)
    return _save(fig, path)
