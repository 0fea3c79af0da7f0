"""The report's text and tables, shared by ``summary.md`` and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from stream.report.measures import CHI2_1DF_01, CHI2_1DF_05
from stream.report.render import Section, fmt, with_ci
from stream.report.tables import AFTER_CUTOFF, SUMMARY_METRICS

if TYPE_CHECKING:
    from stream.report.build import ReportOptions, RunData

DAY_S = 86_400.0


def _strings(rows: list[dict[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={k: pl.String for k in rows[0]}) if rows else pl.DataFrame()


def summary_section(summary: pl.DataFrame, cutoff: float | None) -> Section:
    rows = []
    for r in summary.iter_rows(named=True):
        row = {
            "model": r["model"],
            "scope": r["scope"],
            "events": fmt(r["n_events"]),
            "users": fmt(r["n_users"]),
        }
        for m in SUMMARY_METRICS:
            row[f"{m.upper()} micro"] = with_ci(r[f"micro_{m}"], r[f"micro_{m}_ci"])
            row[f"{m.upper()} macro"] = with_ci(r[f"macro_{m}"], r[f"macro_{m}_ci"])
        row["events/s"] = fmt(r["events_per_s"], 1)
        row["latency p50 (ms)"] = fmt(r["latency_p50_ms"], 1)
        row["latency p99 (ms)"] = fmt(r["latency_p99_ms"], 1)
        rows.append(row)
    text = [
        "Micro: mean over events; macro: mean over users of each user's mean. ± is the 95% "
        "normal-approximation half-width (1.96 · sd / √n, n = events for micro, users for "
        "macro). events/s: a model's events over the wall-clock span from the first event "
        "produced to its last prediction written; latency: written − produced, per event."
    ]
    if cutoff is not None:
        text.append(
            f"The checkpoints were trained on the events before {_date(cutoff)} UTC (the "
            "pretraining cutoff), so those events are in-sample for the models; the rows "
            f"'{AFTER_CUTOFF}' leave them out."
        )
    return Section("Summary", text, _strings(rows))


def _date(seconds: float) -> str:
    return str(np.datetime64(int(seconds), "s"))


def mcnemar_section(whole: pl.DataFrame, figures: list[Path], options: ReportOptions) -> Section:
    rows = [
        {
            "adaptive": r["model"],
            "frozen": r["frozen"],
            "paired events": fmt(r["n_paired"]),
            "n10 (adaptive hit only)": fmt(r["n10"]),
            "n01 (frozen hit only)": fmt(r["n01"]),
            "signed M": fmt(r["statistic"], 2),
            "verdict": _verdict(r["statistic"]),
        }
        for r in whole.iter_rows(named=True)
    ]
    text = (
        f"Signed McNemar on paired hits@10, aligned by event id: M = sign(n10 − n01)·(n10 − n01)²"
        f"/(n10 + n01). The table is the whole run; the figure uses the last "
        f"{options.mcnemar_window:,} paired events (black line, where there is ground truth: "
        f"the shifted cohort's events only). |M| > {CHI2_1DF_05}: p < 0.05, "
        f"> {CHI2_1DF_01}: p < 0.01 (χ², 1 df)."
    )
    if whole.height == 0:
        text = "No adaptive model has its frozen twin (NAME and NAME:frozen) in this run."
    return Section("Adaptive vs frozen twin", [text], _strings(rows), figures)


def _verdict(statistic: float) -> str:
    if abs(statistic) <= CHI2_1DF_05:
        return "no significant difference"
    better = "adaptive" if statistic > 0 else "frozen"
    level = "p < 0.01" if abs(statistic) > CHI2_1DF_01 else "p < 0.05"
    return f"{better} better ({level})"


def recovery_section(
    recovery: pl.DataFrame, shifts: pl.DataFrame, figures: list[Path], options: ReportOptions
) -> Section:
    s = options.recovery
    epsilon = f"{100 * s.epsilon:g}% of the pre-level" if s.relative else f"{s.epsilon:g}"
    text = [
        f"Per model, {s.metric} in {s.window_s / DAY_S:g}-day windows aligned to the shift time "
        f"t* (windows with < {s.min_events} events left out). Pre-level: per-event mean over "
        f"[t* − {s.pre_span_s / DAY_S:g} d, t*). Max drop: pre-level − lowest window in "
        f"[t*, t* + {s.horizon_s / DAY_S:g} d). Recovery: first window after the first dip "
        f"below pre − ε (ε = {epsilon}) that is back within ε for {s.hold} window(s) in a "
        "row; time from t* to its start, "
        "and the group's events before it. Area: Σ max(0, pre − value) × window length (metric "
        "× days); lost: Σ max(0, pre − value) × window events (for HR, expected hits lost).",
    ]
    for r in shifts.iter_rows(named=True):
        when = np.datetime64(int(r["shift_time"]), "s")
        text.append(
            f"Injected shift at {when} UTC: {r['kind']}, {r['n_users']} users, width "
            f"{r['width']:g} s."
        )
    rows = [
        {
            "shift": str(np.datetime64(int(r["shift_time"]), "s")),
            "model": r["model"],
            "group": r["group"],
            "pre-level": fmt(r["pre_level"]),
            "max drop": fmt(r["max_drop"]),
            "recovered": "no dip" if not r["dipped"] else fmt(r["recovered"]),
            "recovery (days)": fmt(None if r["recovery_s"] is None else r["recovery_s"] / DAY_S, 2),
            "recovery (events)": fmt(r["recovery_events"]),
            "area (metric·days)": fmt(r["degradation_area"] / DAY_S, 4),
            "lost": fmt(r["lost_events"], 1),
        }
        for r in recovery.iter_rows(named=True)
    ]
    return Section("Shift recovery", text, _strings(rows), figures)


def flags_section(flags: pl.DataFrame, options: ReportOptions) -> Section:
    text = (
        "A window is flagged for a model when its mean shift score is above the model's mean "
        f"over the whole run by more than {options.flag_k:g} standard errors: "
        "z = (window mean − run mean) · √n / run sd, over the window's n events with a shift "
        f"score (n ≥ {options.min_events}). Events are treated as independent, which they are "
        "not within a user, so read z as a ranking of windows more than as a p-value. Flagged "
        "windows are the rows under the metric curves. The figure shows the mean shift score "
        f"per window (windows with at least {options.min_events} events) for the shifted cohort "
        "and the stable users."
    )
    counts = flags.group_by("model").agg(
        pl.len().alias("n"), pl.col("window_start").min().alias("first")
    )
    rows = [
        {"model": m, "flagged windows": fmt(n), "first flagged": str(np.datetime64(int(f), "s"))}
        for m, n, f in counts.sort("model").iter_rows()
    ]
    return Section("Shifts flagged by the models", [text], _strings(rows))


def sections_for(
    data: RunData,
    summary: pl.DataFrame,
    whole: pl.DataFrame,
    recovery: pl.DataFrame,
    flags: pl.DataFrame,
    shifts: pl.DataFrame,
    figures: dict[str, list[Path]],
    options: ReportOptions,
    axis_end: float | None = None,
) -> list[Section]:
    lo, hi = (np.datetime64(int(t), "s") for t in data.time_span)
    relative = {k: [Path(p.name) for p in v] for k, v in figures.items()}
    run = [
        f"Predictions: {data.files.predictions}. Models: {', '.join(data.models)}. Event time "
        f"{lo} – {hi} UTC. Window {data.window_s:g} s.",
        f"Duplicate (model, event) rows dropped by the report: {data.duplicates:,}.",
        "Ground truth: " + (str(data.files.ground_truth) if data.files.ground_truth else "none"),
    ]
    if axis_end is not None:
        run.append(
            f"Event-time figures end at {_date(axis_end)} UTC, the {options.time_quantile:g} "
            "quantile of event time, so the sparse tail after it does not squeeze the rest; "
            "every table uses all events (--time-quantile 1 draws everything)."
        )
    if data.sink:
        run.append(
            f"Sink: complete {fmt(data.sink.get('complete'))}, duplicates dropped "
            f"{fmt(data.sink.get('duplicates_dropped'))}, malformed records "
            f"{fmt(data.sink.get('malformed_records'))}."
        )
    sections = [Section("Run", run), summary_section(summary, data.pretrain_cutoff)]
    over_time = (
        "Top to bottom: tumbling event-time windows, event-time fading factor, cumulative, the "
        "windows each model flags as shifted, and events per window. Red dashed line: injected "
        "shift (ground truth; a red band of ± 2 widths around a gradual one). Frozen twins are "
        "dashed in their adaptive model's colour."
    )
    sections.append(Section("Metrics over event time", [over_time], images=relative["metrics"]))
    sections.append(mcnemar_section(whole, relative["mcnemar"], options))
    if shifts.height:
        shift_images = [p for p in relative["shift"] if p.name.startswith("recovery")]
        sections.append(recovery_section(recovery, shifts, shift_images, options))
    sections.append(flags_section(flags, options))
    sections[-1].images = [p for p in relative["shift"] if p.name == "shift_scores.png"]
    system = (
        "Processing-time bins (1/40 of the span in which predictions were written), by the wall-"
        "clock time each prediction was written: predictions written per second, and latency = "
        "written − produced. The workers serve every model of a run together, so the models' "
        "lines usually coincide."
    )
    sections.append(Section("Throughput and latency", [system], images=relative["system"]))
    return sections
