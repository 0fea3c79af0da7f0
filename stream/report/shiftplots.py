"""Figures about injected shifts: recovery around t* and the models' shift scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from stream.report.plots import (
    DAY_S,
    METRIC_LABELS,
    Marks,
    Styles,
    _date_axis,
    _save,
    dates,
    decorate,
    flag_panel,
    with_gaps,
)
from stream.report.tables import RecoverySettings

GROUPS = ("shifted cohort", "stable users")


def recovery_figure(
    windows: pl.DataFrame,
    table: pl.DataFrame,
    styles: Styles,
    settings: RecoverySettings,
    shift_time: float,
    path: Path,
) -> Path:
    """Windowed metric around one shift, and its change from each model's pre-shift level."""
    name = METRIC_LABELS.get(settings.metric, settings.metric)
    fig = Figure(figsize=(13, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    at_shift = windows.filter(pl.col("shift_time") == shift_time)
    measured = table.filter(pl.col("shift_time") == shift_time) if table.height else table
    for column, group in enumerate(GROUPS):
        top, bottom = axes[0, column], axes[1, column]
        for model, style in styles.items():
            rows = at_shift.filter((pl.col("model") == model) & (pl.col("group") == group))
            found = measured.filter((pl.col("model") == model) & (pl.col("group") == group))
            if rows.height == 0 or found.height == 0:
                continue
            days = ((rows["window_start"].to_numpy() - shift_time) + settings.window_s / 2) / DAY_S
            values = rows["value"].to_numpy()
            pre = float(found["pre_level"][0])
            change = _change(values, pre, settings.relative)
            step = settings.window_s / DAY_S
            top.plot(*with_gaps(days, values, step), marker=".", ms=4, lw=1.2, **style)
            bottom.plot(*with_gaps(days, change, step), marker=".", ms=4, lw=1.2, **style)
            if found["recovered"][0] and found["dipped"][0]:
                back = float(found["recovery_s"][0]) / DAY_S + settings.window_s / 2 / DAY_S
                bottom.plot(
                    [back],
                    [float(np.interp(back, days, change))],
                    marker="o",
                    ms=9,
                    mfc="none",
                    color=style["color"],
                )
        band = 100 * settings.epsilon if settings.relative else settings.epsilon
        unit = " %" if settings.relative else ""
        bottom.axhspan(-band, band, color="grey", alpha=0.2, lw=0, label=f"± ε = {band:g}{unit}")
        for ax in (top, bottom):
            ax.axvline(0, color="#c0392b", linestyle="--", lw=1.3)
            ax.axvspan(-settings.pre_span_s / DAY_S, 0, color="#3498db", alpha=0.08, lw=0)
            ax.grid(alpha=0.3)
        top.set_title(f"{group}")
        bottom.set_xlabel("event time relative to the injected shift (days; window midpoints)")
    axes[0, 0].set_ylabel(f"{name} per {settings.window_s / DAY_S:g}-day window")
    axes[1, 0].set_ylabel(
        f"{name}: change from\npre-shift level (%)" if settings.relative else f"{name} − pre-level"
    )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    band_handles, band_labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(
        [*handles, *band_handles[-1:]],
        [*labels, *band_labels[-1:]],
        loc="outside upper center",
        ncol=min(7, len(labels) + 1),
        frameon=False,
        title=f"Recovery after the shift at {np.datetime64(int(shift_time), 's')} UTC "
        "(blue band: pre-level span; circles: recovery points)",
        title_fontsize=13,
    )
    return _save(fig, path)


def _change(values: np.ndarray, pre: float, relative: bool) -> np.ndarray:
    """Difference from the pre-shift level: in % of it when ``relative``."""
    if not relative:
        return values - pre
    return 100 * (values - pre) / pre if pre > 0 else np.full_like(values, np.nan)


def shift_score_figure(
    scores: pl.DataFrame,
    styles: Styles,
    marks: Marks,
    flags: pl.DataFrame,
    window_label: str,
    path: Path,
) -> Path:
    """Per-window mean shift score per model, shifted cohort vs stable users."""
    groups = [g for g in GROUPS if g in set(scores["group"].to_list())]
    n_flag_rows = max(1, flags["model"].n_unique())
    fig = Figure(figsize=(11, 3.5 * len(groups) + 0.2 * n_flag_rows), layout="constrained")
    axes = fig.subplots(
        len(groups) + 1,
        1,
        sharex=True,
        height_ratios=[3] * len(groups) + [0.3 + 0.25 * n_flag_rows],
    )
    for ax, group in zip(axes, groups, strict=False):
        for model, style in styles.items():
            rows = scores.filter((pl.col("model") == model) & (pl.col("group") == group))
            if rows.height:
                middle = (rows["window_start"] + rows["window_end"]).to_numpy() / 2
                size = (rows["window_end"] - rows["window_start"]).to_numpy().max()
                x, y = with_gaps(middle, rows["shift_score"].to_numpy(), size)
                ax.plot(dates(x), y, lw=1.1, **style)
        decorate(ax, marks, label=ax is axes[0])
        ax.set_ylabel(f"mean shift score\nper {window_label} window")
        ax.set_title(group if marks.shifts.height else "all users (no ground truth in this run)")
        ax.grid(alpha=0.3)
        if ax is not axes[0]:
            ax.sharey(axes[0])
    flag_panel(axes[-1], flags, styles, marks)
    axes[0].legend(loc="upper left", fontsize=8, ncol=3)
    axes[-1].set_xlabel("event time (date, UTC)")
    _date_axis(axes[-1])
    fig.suptitle(
        "Mean model shift score per window; flagged windows (all users) below", fontsize=13
    )
    return _save(fig, path)
